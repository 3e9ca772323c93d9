// The peer for bench/ingest.py: @atproto/sync's firehose consumer on recorded frames.
//
//   node firehose.mjs FRAMES_FILE SECONDS
//
// FRAMES_FILE holds subscribeRepos frames, each preceded by its length (4 bytes, big
// endian). Each frame goes through exactly what Firehose does per websocket message
// (xrpc-server's frame decoding, the subscribeRepos lexicon validation, Firehose.parseEvt
// with unauthenticatedCommits: CAR read with CID checks, records to lex values), then
// the records are walked for blob references. Repeats the frames for SECONDS on one
// thread and prints {"events", "seconds", "blobs"}.
import { readFileSync } from 'node:fs'
import { Firehose } from '@atproto/sync'
import { ensureChunkIsMessage } from '@atproto/xrpc-server'

const [file, seconds = '3'] = process.argv.slice(2)
const data = readFileSync(file)
const frames = []
for (let at = 0; at < data.length;) {
  const length = data.readUInt32BE(at)
  frames.push(data.subarray(at + 4, at + 4 + length))
  at += 4 + length
}

const firehose = new Firehose({
  service: 'ws://127.0.0.1:1',
  unauthenticatedCommits: true,
  unauthenticatedHandles: true,
  // #identity events resolve the DID; no network here (atcdn only drops a cache entry).
  idResolver: { did: { resolve: async () => null } },
  handleEvent: async () => {},
  onError: (err) => { throw err }
})
const validate = firehose.sub.opts.validate
const METHOD = 'com.atproto.sync.subscribeRepos'

function countBlobs (value) {
  if (Array.isArray(value)) return value.reduce((n, v) => n + countBlobs(v), 0)
  if (value === null || typeof value !== 'object' || ArrayBuffer.isView(value)) return 0
  if (value.$type === 'blob' || (value.ref !== undefined && typeof value.mimeType === 'string')) return 1
  if (Object.getPrototypeOf(value) !== Object.prototype && value.constructor?.name !== 'Object') return 0
  let n = 0
  for (const key in value) n += countBlobs(value[key])
  return n
}

async function handle (frame) {
  const message = ensureChunkIsMessage(frame)
  const t = message.header.t
  const evt = validate({ ...message.body, $type: t.startsWith('#') ? METHOD + t : t })
  if (evt === undefined) return 0
  let blobs = 0
  for (const write of await firehose.parseEvt(evt)) {
    if (write.record) blobs += countBlobs(write.record)
  }
  return blobs
}

const deadline = performance.now() + Number(seconds) * 1000
let events = 0
let blobs = 0
const start = performance.now()
while (performance.now() < deadline) {
  for (const frame of frames) {
    blobs += await handle(frame)
    events++
  }
}
const elapsed = (performance.now() - start) / 1000
process.stdout.write(JSON.stringify({ events, seconds: elapsed, blobs }) + '\n')
