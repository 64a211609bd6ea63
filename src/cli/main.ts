#!/usr/bin/env -S npx tsx
/**
 * The `qalign` command line: `npm run -s qalign -- <command> [options]`.
 * Each command lives in its own file and exports `run(args)`; this file only dispatches.
 * Machine-readable results go to stdout; progress and notices go to stderr.
 */
import { COMMANDS, helpText } from "./commands.ts";
import { CliError } from "./args.ts";

function usage(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((c) => c.length));
  const lines = Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(width)}  ${c.summary}`);
  return `usage: qalign <command> [options]   (qalign <command> --help for its options)\n\ncommands:\n${lines.join("\n")}\n`;
}

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === "--help" || name === "-h" || name === "help") {
    process.stdout.write(usage());
    return name === undefined ? 2 : 0;
  }
  const command = COMMANDS[name];
  if (!command) {
    process.stderr.write(`qalign: unknown command "${name}"\n\n${usage()}`);
    return 2;
  }
  if (rest.includes("--help") || rest.includes("-h")) {
    process.stdout.write(helpText(name));
    return 0;
  }
  await command.run(rest);
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: unknown) => {
    const e = err as Error;
    // Failures caused by input (arguments, files, limits) print one line; programming errors
    // (TypeError, ReferenceError) print the stack, as does any error with QALIGN_DEBUG=1.
    const bug = e instanceof TypeError || e instanceof ReferenceError || !(e instanceof Error);
    const showStack = (bug || process.env.QALIGN_DEBUG === "1") && !(err instanceof CliError);
    process.stderr.write(`qalign: ${showStack ? (e?.stack ?? String(err)) : e.message}\n`);
    process.exit(1);
  },
);
