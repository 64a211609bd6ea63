import { probedFileInfo, resolveUrl, type HubClient } from "./hub.ts";

/**
 * The Hub client of a page (hub.ts's HubClient), with fetch: the two requests that
 * @huggingface/hub's fileDownloadInfo and downloadFile make, which Node's client (hub_node.ts)
 * takes from the library. A page cannot: the package's exports map hides its browser build
 * from esbuild, which then bundles its Node build (node:fs, node:os) and fails.
 * - The file's size and ETag: `GET <endpoint>/<repo>/resolve/<revision>/<file>` with
 *   `Range: bytes=0-0` (redirects to the CDN are followed), read by hub.ts's probedFileInfo.
 * - Its bytes from an offset: the same URL with `Range: bytes=<from>-`.
 */

/** An HTTP failure, with `statusCode` as @huggingface/hub's HubApiError has it. */
class HubHttpError extends Error {
  override name = "HubHttpError";
  constructor(
    readonly statusCode: number,
    url: string,
  ) {
    super(`the Hub answered ${statusCode} for ${url}`);
  }
}

export const fetchClient: HubClient = async (request, path) => {
  const { accessToken, fetch } = request;
  const url = resolveUrl(request, path);
  const auth: Record<string, string> = accessToken === undefined ? {} : { Authorization: `Bearer ${accessToken}` };
  const probe = await fetch(url, { headers: { ...auth, Range: "bytes=0-0" } });
  await probe.body?.cancel();
  if (probe.status === 404 && probe.headers.get("X-Error-Code") === "EntryNotFound") return null;
  if (!probe.ok) throw new HubHttpError(probe.status, url);
  const { size, etag } = probedFileInfo(url, probe.status, probe.headers);
  return {
    size,
    etag,
    async stream(from) {
      const res = await fetch(url, { headers: from === 0 ? auth : { ...auth, Range: `bytes=${from}-` } });
      if (!res.ok) throw new HubHttpError(res.status, url);
      if (from > 0 && res.status !== 206) throw new Error(`${url}: the server ignored the range request (HTTP ${res.status}), so the download cannot resume`);
      if (res.body === null) throw new Error(`${url}: HTTP ${res.status} without a body`);
      return res.body;
    },
  };
};
