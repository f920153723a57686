// Copies the front-end files the broker serves from node_modules into broker/static/vendor.
import { copyFileSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "..", "static", "vendor");
const files = [
  ["htmx.org/dist/htmx.min.js", "htmx.min.js"],
  ["asciinema-player/dist/bundle/asciinema-player.min.js", "asciinema-player.min.js"],
  ["asciinema-player/dist/bundle/asciinema-player.css", "asciinema-player.css"],
];
mkdirSync(out, { recursive: true });
for (const [src, dst] of files) {
  copyFileSync(join(here, "node_modules", src), join(out, dst));
}
console.log(`copied ${files.length} front-end file(s) to ${out}`);
