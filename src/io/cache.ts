import envPaths from "env-paths";

/**
 * Where qalign keeps what it generates or downloads once and reuses (the tiny checkpoint):
 * $QALIGN_CACHE when set, else the operating system's per-user cache folder as `env-paths`
 * names it (Linux `$XDG_CACHE_HOME/qalign` or `~/.cache/qalign`, macOS `~/Library/Caches/qalign`,
 * Windows `%LOCALAPPDATA%\qalign\Cache`). Never a folder inside the installed package, which
 * may be read-only and is replaced on every install.
 */
export function cacheDir(): string {
  return process.env.QALIGN_CACHE || envPaths("qalign", { suffix: "" }).cache;
}
