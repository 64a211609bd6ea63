#!/usr/bin/env node
/**
 * The `qalign` command line: `npx qalign <command> [options]` where qalign is installed (the
 * compiled dist/cli/main.js, plain Node), `npm run -s qalign -- <command> [options]` in the checkout.
 * Each command lives in its own file and exports its option table and `run(values)`; this file
 * parses the arguments with that table and dispatches.
 * Machine-readable results go to stdout; progress and notices go to stderr.
 */
import { COMMANDS, helpText } from "./commands.ts";
import { CliError, parse } from "./args.ts";
import { flush, isReaderGone, stopWhenReaderGoes } from "./output.ts";
import { packageVersion } from "../io/package.ts";

function usage(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((c) => c.length));
  const lines = Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(width)}  ${c.summary}`);
  return `usage: qalign <command> [options]   (qalign <command> --help for its options; qalign --version)\n\ncommands:\n${lines.join("\n")}\n`;
}

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === "--help" || name === "-h" || name === "help") {
    process.stdout.write(usage());
    return name === undefined ? 2 : 0;
  }
  if (name === "--version" || name === "-v") {
    process.stdout.write(`${await packageVersion()}\n`);
    return 0;
  }
  const command = COMMANDS[name];
  if (!command) {
    process.stderr.write(`qalign: unknown command "${name}"\n\n${usage()}`);
    return 2;
  }
  if (rest.includes("--help") || rest.includes("-h")) {
    process.stdout.write(await helpText(name));
    return 0;
  }
  const module = await command.load();
  const values = parse(name, rest, module.options);
  // --model org/name (no such local folder): the checkpoint is downloaded from the Hub first.
  const hub = "model" in values && typeof values.model === "string" ? await import("../model/hub_node.ts") : null;
  if (hub && hub.isHubName(values.model as string)) {
    const repo = values.model as string;
    const shown = new Set<string>();
    (values as Record<string, unknown>).model = await hub.downloadModel(repo, {
      onDownload: (file, bytes, size) => {
        if (bytes === size && !shown.has(file)) process.stderr.write(`qalign: ${repo}: ${file} (${size} bytes)\n`);
        if (bytes === size) shown.add(file);
      },
    });
  }
  await module.run(values);
  return 0;
}

/** The one-line message (or, for a bug or with QALIGN_DEBUG=1, the stack) of a failure. */
function describeFailure(err: unknown): string {
  const e = err as Error;
  // Failures caused by input (arguments, files, limits) print one line; programming errors
  // (TypeError, ReferenceError) print the stack, as does any error with QALIGN_DEBUG=1.
  const bug = e instanceof TypeError || e instanceof ReferenceError || !(e instanceof Error);
  const showStack = (bug || process.env.QALIGN_DEBUG === "1") && !(err instanceof CliError);
  return `qalign: ${showStack ? (e?.stack ?? String(err)) : e.message}\n`;
}

/**
 * Exits once stdout and stderr hold nothing unwritten: a result cut short by the exit is worse
 * than none. A reader that has gone ends the process quietly (stopWhenReaderGoes); another
 * stdout error makes the status 1.
 */
async function exitAfterOutput(code: number): Promise<never> {
  try {
    await flush(process.stdout);
  } catch (e) {
    if (isReaderGone(e)) process.exit(0);
    process.stderr.write(`qalign: stdout: ${(e as Error).message}\n`);
    code = 1;
  }
  await flush(process.stderr).catch(() => {});
  process.exit(code);
}

stopWhenReaderGoes(process.stdout);
main(process.argv.slice(2)).then(
  (code) => exitAfterOutput(code),
  (err: unknown) => {
    process.stderr.write(describeFailure(err));
    return exitAfterOutput(1);
  },
);
