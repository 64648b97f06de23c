// Runs the README's JavaScript blocks against a real hub; started and driven by
// tests/snippets.rs (which owns the hub, publishes, and restarts it).
//
//   node clients.mjs eventsource <hub url>   the ```js block (plain EventSource)
//   node clients.mjs react <hub url>         the ```jsx block (the useHeraldEvents hook)
//
// Each block is taken from README.md as it is written there (exactly one of each
// must exist). The page environment is made of npm packages installed in
// ../browser/node_modules: `eventsource` as the EventSource global, `jsdom` for the
// DOM, `react` and `react-dom`, and `sucrase` to turn JSX into plain calls. Relative
// URLs (as a page on the hub's origin would use) resolve against <hub url>.
//
// Lines on stdout report what the snippet did; stdin takes `DONE` (react mode:
// unmount and exit).

import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { createInterface } from "node:readline";

const [mode, base] = process.argv.slice(2);
if (!["eventsource", "react"].includes(mode) || !base) {
  console.error("usage: node clients.mjs eventsource|react <hub url>");
  process.exit(2);
}
const require = createRequire(new URL("../browser/package.json", import.meta.url));
const readme = readFileSync(new URL("../../README.md", import.meta.url), "utf8");
const say = (line) => process.stdout.write(`${line}\n`);

/** The one fenced block of `lang` in the README, exactly as written. */
function block(lang) {
  const fence = new RegExp("^```" + lang + "\\n([\\s\\S]*?)^```$", "gm");
  const found = [...readme.matchAll(fence)].map((m) => m[1]);
  if (found.length !== 1) {
    throw new Error(`expected one \`\`\`${lang} block in README.md, found ${found.length}`);
  }
  return found[0];
}

// A page's globals: EventSource and fetch, resolving relative URLs on the hub.
const { EventSource: NodeEventSource } = require("eventsource");
globalThis.EventSource = class EventSource extends NodeEventSource {
  constructor(url, init) {
    super(new URL(url, base), init);
  }
};
const nodeFetch = globalThis.fetch;
globalThis.fetch = (url, init) => nodeFetch(new URL(url, base), init);

if (mode === "eventsource") {
  // The snippet is a page script; what it calls are the page's own functions.
  const run = new Function(
    "sessionId",
    "refetchComment",
    "refetchEverything",
    "showNotice",
    `${block("js")}\nreturn source;`,
  );
  const source = run(
    "tab-1",
    (id) => say(`refetchComment ${id}`),
    (topic) => say(`refetchEverything ${topic}`),
    (text) => {
      say(`showNotice ${text}`);
      // Closed, and it stays closed: no reconnect takes the session back.
      setTimeout(() => {
        say(`readyState ${source.readyState}`);
        process.exit(0);
      }, 500);
    },
  );
  source.addEventListener("open", () => say("open"));
} else {
  const { JSDOM } = require("jsdom");
  const dom = new JSDOM('<!doctype html><html><body><div id="root"></div></body></html>', {
    url: base,
  });
  globalThis.window = dom.window;
  globalThis.document = dom.window.document;
  if (typeof navigator === "undefined") {
    Object.defineProperty(globalThis, "navigator", {
      value: dom.window.navigator,
      configurable: true,
    });
  }
  const { transform } = require("sucrase");
  const { code } = transform(block("jsx"), {
    transforms: ["jsx", "imports"],
    jsxRuntime: "automatic",
    production: true,
  });
  const module = { exports: {} };
  new Function("require", "module", "exports", code)(require, module, module.exports);
  const { Comments, useHeraldEvents } = module.exports;
  if (typeof useHeraldEvents !== "function") throw new Error("no useHeraldEvents export");

  const React = require("react");
  const { createRoot } = require("react-dom/client");
  const root = createRoot(document.getElementById("root"));
  root.render(React.createElement(Comments, { threadId: 1 }));

  // Report the rendered page whenever it changes: "<status>|<comment>|<comment>...".
  let last = "";
  const watch = setInterval(() => {
    const status = document.querySelector(".status")?.textContent ?? "";
    const items = [...document.querySelectorAll("li")].map((li) => li.textContent);
    const now = [status, ...items].join("|");
    if (now !== last) {
      last = now;
      say(`DOM ${now}`);
    }
  }, 20);
  createInterface({ input: process.stdin }).on("line", (line) => {
    if (line.trim() === "DONE") {
      root.unmount(); // the hook's cleanup closes the EventSource
      clearInterval(watch);
      say("UNMOUNTED");
      setTimeout(() => process.exit(0), 100);
    }
  });
}
