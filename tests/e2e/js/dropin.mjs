// The unmodified @fal-ai/client against ovi-server answering for fal's own hosts (fal.run,
// queue.fal.run, rest.fal.ai resolve to the server through /etc/hosts in a network namespace).
// No requestMiddleware, no proxy: only the credentials, and NODE_EXTRA_CA_CERTS for our CA.
//
// Environment: FAL_KEY, NODE_EXTRA_CA_CERTS, OVI_IMAGE_FILE (a PNG sent as a Blob).
// Prints one JSON line with what each call returned.
import { readFile } from "node:fs/promises";
import { fal } from "@fal-ai/client";

fal.config({ credentials: process.env.FAL_KEY });

const T2V = "fal-ai/ovi";
const I2V = "fal-ai/ovi/image-to-video";
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function untilCompleted(app, requestId) {
  const deadline = Date.now() + 120_000;
  for (;;) {
    const status = await fal.queue.status(app, { requestId, logs: true });
    if (status.status === "COMPLETED") return status;
    if (Date.now() > deadline) throw new Error(`${requestId} not completed in time`);
    await sleep(200);
  }
}

async function videoSize(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`GET ${url}: ${response.status}`);
  return (await response.arrayBuffer()).byteLength;
}

const out = {};

// subscribe, with a Blob input the client uploads by itself (rest.fal.ai + PUT)
const image = new Blob([await readFile(process.env.OVI_IMAGE_FILE)], { type: "image/png" });
const sub = await fal.subscribe(I2V, {
  input: { prompt: "A kite rises. <S>Up!<E>", image_url: image, num_inference_steps: 1 },
  logs: true,
});
out.subscribe = { requestId: sub.requestId, data: sub.data, bytes: await videoSize(sub.data.video.url) };

// submit, status, result
const { request_id: submitted } = await fal.queue.submit(T2V, {
  input: { prompt: "Waves on a shore.", num_inference_steps: 1, seed: 5 },
});
const done = await untilCompleted(T2V, submitted);
const result = await fal.queue.result(T2V, { requestId: submitted });
out.submit = { requestId: submitted, status: done.status, logs: done.logs.length, data: result.data };

// cancel (queued behind nothing or running: either way it ends cancelled)
const { request_id: cancelled } = await fal.queue.submit(T2V, {
  input: { prompt: "A long one.", num_inference_steps: 50 },
});
await fal.queue.cancel(T2V, { requestId: cancelled });
const after = await untilCompleted(T2V, cancelled);
out.cancel = { requestId: cancelled, status: after.status, error_type: after.error_type ?? null };

// run (fal.run, the sync route)
const run = await fal.run(T2V, { input: { prompt: "A bell rings.", num_inference_steps: 1, seed: 9 } });
out.run = { requestId: run.requestId, data: run.data };

console.log(JSON.stringify(out));
