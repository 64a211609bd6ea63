import { marked } from "marked";

/**
 * Reports as one HTML file that opens anywhere: the report's Markdown rendered by `marked`
 * (GitHub-flavoured: tables), with each chart the Markdown links as an image (`![..](name.svg)`)
 * put inline as its SVG, so the page needs no other file, and a plain stylesheet.
 */

/** A minimal readable style: system font, a centred column, bordered tables, charts at full width. */
const STYLE = `body{font:15px/1.5 system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#111;background:#fff}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:.2em .5em;text-align:left}
figure{margin:1em 0}figure svg{max-width:100%;height:auto}pre{background:#f4f4f4;padding:.5em;overflow:auto}code{background:#f4f4f4}`;

/** Text as HTML text (for the title). */
function escapeHtml(s: string): string {
  return s.replaceAll("&", "&amp;").replaceAll("<", "&lt;").replaceAll(">", "&gt;").replaceAll('"', "&quot;");
}

/**
 * A standalone HTML document from `markdown`: images whose src is a key of `inline` become that
 * SVG (in a `<figure>` with the image's alt text as caption); other images stay links.
 * @param title the document's `<title>`
 * @param inline chart file name (as the Markdown links it) -> its SVG text
 */
export function reportHtml(title: string, markdown: string, inline: Readonly<Record<string, string>> = {}): string {
  const renderer = new marked.Renderer();
  const image = renderer.image.bind(renderer);
  renderer.image = (token) => {
    const svg = inline[token.href];
    if (svg === undefined) return image(token);
    // The SVG document's XML prolog is not allowed inside HTML; the <svg> element is.
    return `<figure>${svg.replace(/^<\?xml[^>]*>\s*/, "")}<figcaption>${escapeHtml(token.text)}</figcaption></figure>`;
  };
  const body = marked.parse(markdown, { gfm: true, async: false, renderer }) as string;
  return `<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>${escapeHtml(title)}</title><style>${STYLE}</style></head>\n<body>\n${body}</body></html>\n`;
}
