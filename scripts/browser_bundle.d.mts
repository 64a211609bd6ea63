/** See browser_bundle.mjs: URL path -> JavaScript text of the bundled browser entry and its chunks. */
export function bundleBrowser(): Promise<Record<string, string>>;
