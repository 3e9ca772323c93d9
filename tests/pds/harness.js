// The reference PDS (0.4 line) and a PLC directory, as real peers for atcdn's tests.
//
//   node harness.js DATA_DIR MEDIA_FILE...
//
// Starts a PLC directory (did-method-plc's server on its in-memory database) and a PDS
// (SQLite under DATA_DIR) on free 127.0.0.1 ports, creates an account, uploads each file
// with com.atproto.repo.uploadBlob, references every blob from a post (images as
// app.bsky.embed.images, .mp4 files as app.bsky.embed.video; an unreferenced blob is
// garbage-collected by the PDS), then prints one JSON line
//   {"plcUrl", "pdsUrl", "adminPassword", "did", "handle",
//    "blobs": [{"cid", "mimeType", "size", "file"}]}
// on stdout and keeps running until it is killed. Each getBlob the PDS answers in full
// then adds a line {"getBlob": {"did", "cid", "status"}}.
//
// The blobstore is the PDS's own choice from its usual variables: the disk at
// PDS_BLOBSTORE_DISK_LOCATION (default DATA_DIR/blobs), or S3 when PDS_BLOBSTORE_S3_BUCKET
// is set (with PDS_BLOBSTORE_S3_{REGION,ENDPOINT,FORCE_PATH_STYLE,ACCESS_KEY_ID,
// SECRET_ACCESS_KEY}).
'use strict'

const fs = require('node:fs')
const path = require('node:path')
const { PlcServer, Database: PlcDatabase } = require('@did-plc/server')
const pds = require('@atproto/pds')
const { Secp256k1Keypair } = require('@atproto/crypto')

// Everything listens on loopback only: PDS.start() and PlcServer.start() call
// listen(port) with no host, which would bind every interface.
const net = require('node:net')
const listen = net.Server.prototype.listen
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === 'number' && typeof args[1] !== 'string') args.splice(1, 0, '127.0.0.1')
  return listen.apply(this, args)
}

const ADMIN_PASSWORD = 'test-admin-password'
const MIME_TYPES = { '.jpg': 'image/jpeg', '.jpeg': 'image/jpeg', '.png': 'image/png',
  '.webp': 'image/webp', '.gif': 'image/gif', '.mp4': 'video/mp4' }

// The blobstore settings of the PDS's own environment variables (see the top).
function blobstoreEnv (dataDir) {
  const e = process.env
  if (e.PDS_BLOBSTORE_S3_BUCKET) {
    return {
      blobstoreS3Bucket: e.PDS_BLOBSTORE_S3_BUCKET,
      blobstoreS3Region: e.PDS_BLOBSTORE_S3_REGION || 'us-east-1',
      blobstoreS3Endpoint: e.PDS_BLOBSTORE_S3_ENDPOINT,
      blobstoreS3ForcePathStyle: e.PDS_BLOBSTORE_S3_FORCE_PATH_STYLE === 'true',
      blobstoreS3AccessKeyId: e.PDS_BLOBSTORE_S3_ACCESS_KEY_ID,
      blobstoreS3SecretAccessKey: e.PDS_BLOBSTORE_S3_SECRET_ACCESS_KEY
    }
  }
  return { blobstoreDiskLocation: e.PDS_BLOBSTORE_DISK_LOCATION || path.join(dataDir, 'blobs') }
}

async function startPlc () {
  const plc = PlcServer.create({ db: PlcDatabase.mock(), port: 0 })
  const server = await plc.start()
  return { plc, url: `http://127.0.0.1:${server.address().port}` }
}

async function startPds (dataDir, plcUrl) {
  const port = await freePort()
  const rotationKey = await Secp256k1Keypair.create({ exportable: true })
  const env = {
    devMode: true,
    port,
    hostname: 'localhost', // dev mode: plain http
    dataDirectory: dataDir,
    ...blobstoreEnv(dataDir),
    didPlcUrl: plcUrl,
    serviceHandleDomains: ['.test'],
    inviteRequired: false,
    rateLimitsEnabled: false,
    disableSsrfProtection: true,
    crawlers: [],
    bskyAppViewUrl: 'https://appview.invalid',
    bskyAppViewDid: 'did:example:appview',
    bskyAppViewCdnUrlPattern: 'https://cdn.invalid/img/%s/plain/%s/%s@%s',
    modServiceUrl: 'https://moderation.invalid',
    modServiceDid: 'did:example:moderation',
    jwtSecret: 'test-jwt-secret',
    adminPassword: ADMIN_PASSWORD,
    plcRotationKeyK256PrivateKeyHex: Buffer.from(await rotationKey.export()).toString('hex')
  }
  const cfg = pds.envToCfg(env)
  // The URL written into DID documents as #atproto_pds: the loopback address the PDS
  // listens on (a 'localhost' name could resolve to ::1 first).
  cfg.service.publicUrl = `http://127.0.0.1:${port}`
  const server = await pds.PDS.create(cfg, pds.envToSecrets(env))
  await server.start()
  // One line per getBlob answered in full, so tests can count what reached the PDS:
  //   {"getBlob": {"did", "cid", "status"}}
  server.server.on('request', (req, res) => {
    if (!req.url.startsWith('/xrpc/com.atproto.sync.getBlob')) return
    const query = new URL(req.url, 'http://x').searchParams
    res.on('finish', () => {
      process.stdout.write(JSON.stringify({ getBlob: { did: query.get('did'), cid: query.get('cid'), status: res.statusCode } }) + '\n')
    })
  })
  return { server, url: `http://127.0.0.1:${port}` }
}

function freePort () {
  return new Promise((resolve, reject) => {
    const srv = require('node:net').createServer()
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address()
      srv.close(() => resolve(port))
    })
    srv.on('error', reject)
  })
}

async function xrpc (base, method, { token, json, body, contentType } = {}) {
  const headers = {}
  if (token) headers.authorization = `Bearer ${token}`
  if (json !== undefined) {
    headers['content-type'] = 'application/json'
    body = JSON.stringify(json)
  } else if (contentType) {
    headers['content-type'] = contentType
  }
  const res = await fetch(`${base}/xrpc/${method}`, { method: 'POST', headers, body })
  const text = await res.text()
  if (!res.ok) throw new Error(`${method}: ${res.status} ${text}`)
  return JSON.parse(text)
}

async function main () {
  const [dataDir, ...files] = process.argv.slice(2)
  if (!dataDir) throw new Error('usage: node harness.js DATA_DIR IMAGE_FILE...')
  fs.mkdirSync(dataDir, { recursive: true })

  const plc = await startPlc()
  const pdsServer = await startPds(dataDir, plc.url)
  const base = pdsServer.url

  const handle = 'alice.test'
  const account = await xrpc(base, 'com.atproto.server.createAccount', {
    json: { handle, email: 'alice@example.com', password: 'alice-password' }
  })
  const token = account.accessJwt

  const blobs = []
  for (const file of files) {
    const mimeType = MIME_TYPES[path.extname(file).toLowerCase()] || 'application/octet-stream'
    const { blob } = await xrpc(base, 'com.atproto.repo.uploadBlob', {
      token, body: fs.readFileSync(file), contentType: mimeType
    })
    // One post per blob: posts hold at most 4 images, and each must be referenced.
    const name = path.basename(file)
    const embed = blob.mimeType.startsWith('video/')
      ? { $type: 'app.bsky.embed.video', video: blob, alt: name }
      : { $type: 'app.bsky.embed.images', images: [{ alt: name, image: blob }] }
    await xrpc(base, 'com.atproto.repo.createRecord', {
      token,
      json: {
        repo: account.did,
        collection: 'app.bsky.feed.post',
        record: {
          $type: 'app.bsky.feed.post',
          text: name,
          createdAt: new Date().toISOString(),
          embed
        }
      }
    })
    blobs.push({ cid: blob.ref.$link, mimeType: blob.mimeType, size: blob.size, file })
  }

  process.stdout.write(JSON.stringify({ plcUrl: plc.url, pdsUrl: base, adminPassword: ADMIN_PASSWORD, did: account.did, handle, blobs }) + '\n')

  const stop = async () => {
    await pdsServer.server.destroy().catch(() => {})
    await plc.plc.destroy().catch(() => {})
    process.exit(0)
  }
  process.on('SIGTERM', stop)
  process.on('SIGINT', stop)
}

main().catch((err) => {
  console.error(err)
  process.exit(1)
})
