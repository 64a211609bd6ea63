/**
 * qalign: the public entry on Node. `import * as qa from "qalign"`. The host-neutral core
 * (tensors, autograd, devices) is core.ts; this adds what reads and writes files.
 *
 * Exports grouped by layer, in the layer order of the README's Layout table (which
 * test/layers.test.ts enforces on every import under src/).
 */
export * from "./core.ts";

// io (Node: the file system)
export { nodeFiles } from "./io/node_files.ts";
export { renderSvg, writePlot, toCsv, PlotSpecError, type PlotSpec, type FullSpec, type PlotRow, type PlotFiles } from "./io/plot.ts";
export { sha256, sha256File, sha256SafetensorsHeader, type Provenance } from "./io/provenance.ts";

// model (Node: the tiny checkpoint, written to the cache folder)
export { ensureTinyModel, writeTinyModel, TINY_CONFIG } from "./model/tiny.ts";
export { downloadModel, isHubName, nodeStore } from "./model/hub_node.ts";
// eval
export { LANGUAGES, LANGUAGE_NAMES, isLang, parseLangs, type Lang } from "./eval/languages.ts";
export { TASKS, getTask, type TaskId, type TaskSpec, type InputField } from "./eval/tasks.ts";
export { FolderSource, MemorySource, sampleSource, SAMPLE_DATA_URL, type DataSource } from "./eval/source.ts";
export { resolveDataSource, SHARED_DATA_DIR, SAMPLE_DATA_FILE, PAPER_PROMPTS_FILE } from "./eval/default_data.ts";
export { loadTaskData, readItems, checkFields, type Item, type TaskData, type OnInvalid } from "./eval/data.ts";
export { FIELD_WORDS, fieldWords, questionFile, parseQuestionLabels, type FieldWords } from "./eval/fields.ts";
export { selectDemos, formatItem, formatPrefix, languagePrompts, type PromptOptions, type LanguagePrompts } from "./eval/prompt.ts";
export { byteToUnicode, labelTokenCandidates, labelTokenIds, tokenBytes, describeToken, type Vocabulary } from "./eval/label_tokens.ts";
export {
  paperPrompts,
  parsePaperPrompts,
  paperScript,
  tableWords,
  renderPaperPrompt,
  PAPER_PROMPTS_URL,
  type LabelLanguage,
  type PaperPrompts,
  type PaperScript,
  type AnswerRole,
} from "./eval/paper.ts";
export { authorsTokenIds } from "./eval/authors_tokens.ts";
export { authorsRule, authorsChoice, authorsCorrect, type AuthorsRule } from "./eval/authors_scoring.ts";
export { PythonRandom } from "./eval/python_random.ts";
export {
  buildPrompts,
  promptIds,
  classTokenIds,
  protocolSettings,
  defaultLabels,
  DEFAULT_PROTOCOL,
  PROTOCOLS,
  type Protocol,
  type ProtocolOptions,
  type ProtocolPrompts,
} from "./eval/protocol.ts";
export { prefixMasses, argmaxWithTies } from "./eval/decode.ts";
export { logSumExp } from "./tensor/logsumexp.ts";
export { wilsonInterval, confusionMatrix, accuracyOf, macroAverage, Z95, type Interval, type Accuracy } from "./eval/metrics.ts";
export { commonPrefix, truncateLeft, PrefixCache, windowLogits } from "./eval/batch.ts";
export {
  evaluateLanguage,
  prepareRows,
  checkLabelSets,
  scoreBatches,
  type PreparedRows,
  type Row,
  type EvalOptions,
  type EvalContext,
  type ScoreMode,
  type Scoring,
  type LanguageResult,
  type ItemResult,
  type Truncation,
} from "./eval/evaluate.ts";
export { questionPairs, questionLanguages } from "./eval/questions.ts";
export { formatTable, resultRows } from "./eval/report.ts";

// interp
export { probe, type ProbeSet, type ProbeOptions, type ProbeResult, type LensItem, type LensLayer, type LensLanguage, type KeptStates } from "./interp/probe.ts";
export { pca, type PcaOptions, type PcaResult } from "./interp/pca.ts";
export { pearson, correlationByLayer, type CorrelationPoint } from "./interp/correlation.ts";
export { buildProbeSets, type ProbeSetOptions } from "./interp/sets.ts";
export { interpret, summarize, writeInterpReport, type InterpOptions, type InterpReport, type InterpSummary, type PcaLayer } from "./interp/report.ts";

// align
export { QUESTION_TASK, trainTaskMessage, type AlignConfig, type AlignTraining, type AlignResults, type TrainingSummary } from "./align/config.ts";
export { settingsDiff } from "./align/folder.ts";
export { comparisons, comparisonTable, writeAccuracyChart, PAPER_COMMANDS, type Comparison } from "./align/report.ts";
export { runAlign } from "./align/run.ts";
