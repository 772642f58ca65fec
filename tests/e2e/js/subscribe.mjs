// Drives the real @fal-ai/client against ovi-server: the README's JS drop-in recipe.
//
// Environment:
//   OVI_BASE_URL   server base, e.g. https://127.0.0.1:8443 (trust its CA with NODE_EXTRA_CA_CERTS)
//   FAL_KEY        API key (optional when the server has none)
//   OVI_APP        endpoint id (default fal-ai/ovi)
//   OVI_MODE       "polling" (default) or "streaming"
//   OVI_CALL       "subscribe" (default) or "run" (fal.run, the sync route)
//   OVI_INPUT      JSON input
//   OVI_IMAGE_FILE optional path: sent as a Blob in input.image_url, so the client uploads it
//                  through /storage/upload/initiate + PUT before submitting
//
// Prints one JSON line: {requestId, data, statuses, lastLogs, requests}.
import { readFile } from "node:fs/promises";
import { fal } from "@fal-ai/client";

const base = new URL(process.env.OVI_BASE_URL);
const basePath = base.pathname.replace(/\/$/, "");
const falHosts = {
  "fal.run": "",
  "queue.fal.run": "/queue",
  "rest.fal.ai": "",
};
const requests = [];

// --- the drop-in recipe: rewrite fal's hosts to this server ---
fal.config({
  credentials: process.env.FAL_KEY || undefined,
  requestMiddleware: async (request) => {
    const url = new URL(request.url);
    const prefix = falHosts[url.hostname];
    if (prefix === undefined) return request; // not a fal host (e.g. our own upload URL)
    const target = new URL(base);
    target.pathname = basePath + prefix + url.pathname;
    target.search = url.search;
    requests.push(`${request.method} ${target.pathname}`);
    return { ...request, url: target.toString() };
  },
});

const app = process.env.OVI_APP || "fal-ai/ovi";
const mode = process.env.OVI_MODE || "polling";
const input = JSON.parse(process.env.OVI_INPUT || "{}");
if (process.env.OVI_IMAGE_FILE) {
  const bytes = await readFile(process.env.OVI_IMAGE_FILE);
  input.image_url = new Blob([bytes], { type: "image/png" });
}

const statuses = [];
let lastLogs = []; // the log messages of the last update, as the client assembled them
try {
  const result =
    process.env.OVI_CALL === "run"
      ? await fal.run(app, { input })
      : await fal.subscribe(app, {
          input,
          mode,
          logs: true,
          pollInterval: 100,
          onQueueUpdate: (update) => {
            const logs = update.logs || [];
            statuses.push({ status: update.status, logs: logs.length });
            lastLogs = logs.map((entry) => entry.message);
          },
        });
  console.log(
    JSON.stringify({
      requestId: result.requestId,
      data: result.data,
      statuses,
      lastLogs,
      requests,
    }),
  );
} catch (error) {
  console.log(
    JSON.stringify({
      error: String(error && error.message ? error.message : error),
      status: error && error.status,
      body: error && error.body,
      statuses,
      requests,
    }),
  );
  process.exitCode = 1;
}
