// Runs one scenario of scenario.mjs with the library under Node (the `ws` package).
// Talks to the pytest side in JSON lines: {"mark": name} out, "done <name>" in,
// then {"result": …}.
//   node run_node.mjs <path of dist/index.js> <scenario> <json args>
import { createInterface } from "node:readline";
import { pathToFileURL } from "node:url";
import * as scenarios from "./scenario.mjs";

const [libPath, name, argsJson] = process.argv.slice(2);
const lib = await import(pathToFileURL(libPath).href);
const waiting = new Map();
createInterface({ input: process.stdin }).on("line", (line) => {
  const [word, mark] = line.trim().split(" ");
  if (word === "done") waiting.get(mark)?.();
});
const io = {
  mark(m) {
    process.stdout.write(JSON.stringify({ mark: m }) + "\n");
    return new Promise((resolve) => waiting.set(m, resolve));
  },
};
const result = await scenarios[name](lib, io, JSON.parse(argsJson));
process.stdout.write(JSON.stringify({ result }) + "\n");
process.exit(0);
