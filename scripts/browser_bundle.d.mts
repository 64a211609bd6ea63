/** See browser_bundle.mjs: URL path -> JavaScript text of the bundled browser entry and its chunks. */
export function bundleBrowser(): Promise<Record<string, string>>;
/** See browser_bundle.mjs: the demo page's files under URL folder `base` (default "/"), its placeholder naming `models` (URL paths of served checkpoints). */
export function demoFiles(base?: string, models?: readonly string[]): Record<string, { type: string; body: string }>;
