/** See serve_files.mjs: the answer to a GET or HEAD of a local file with an optional Range header (`body` holds just the bytes to send), null when it is not a file. */
export function fileAnswer(
  local: string,
  range: string | null | undefined,
): { status: number; headers: Record<string, string>; body: Buffer } | null;
