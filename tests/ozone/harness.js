// The reference network with its moderation service, as @atproto/dev-env assembles it:
// PLC, PDS, AppView (@atproto/bsky), bsync and Ozone (TestNetwork.create), on one
// PostgreSQL (DB_POSTGRES_URL; REDIS_HOST must be set, dev-env never connects to it).
//
//   node harness.js IMAGE_FILE
//
// Creates an account with a post embedding IMAGE_FILE (a JPEG), then prints one JSON line
//   {"plcUrl", "pdsUrl", "ozoneUrl", "ozoneDid", "controlUrl", "did", "postUri",
//    "postCid", "blobCid", "startSeconds"}
// and serves moderation commands on controlUrl (POST, answered with JSON) until killed:
//   /takedown-record, /reverse-record     Ozone takedown of the post (with its blob)
//   /takedown-account, /reverse-account   Ozone takedown of the account
//   /suspend-account                      a 24 h takedown (a suspension; reversed likewise)
// each an emitEvent by dev-env's moderator account (a service JWT signed by its key),
// exactly as a human moderator's Ozone UI would send it.
'use strict'

const started = process.hrtime.bigint()
const fs = require('node:fs')
const http = require('node:http')
const net = require('node:net')

// Everything listens on loopback only (dev-env's services call listen(port) with no host).
const listen = net.Server.prototype.listen
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === 'number' && typeof args[1] !== 'string') args.splice(1, 0, '127.0.0.1')
  if (args[0] && typeof args[0] === 'object' && !args[0].host && args[0].port !== undefined) {
    args[0] = { ...args[0], host: '127.0.0.1' }
  }
  return listen.apply(this, args)
}

const loopback = (url) => url.replace('//localhost:', '//127.0.0.1:')

async function main () {
  const imageFile = process.argv[2]
  const { TestNetwork } = await import('@atproto/dev-env')
  const network = await TestNetwork.create({ dbPostgresSchema: process.env.DB_POSTGRES_SCHEMA || "atcdn" })

  const agent = network.pds.getAgent()
  await agent.createAccount({ email: 'alice@test.com', handle: 'alice.test', password: 'alice-pass' })
  const did = agent.session.did
  const upload = await agent.uploadBlob(fs.readFileSync(imageFile), { encoding: 'image/jpeg' })
  const image = upload.data.blob
  const post = await agent.post({
    text: 'a post with an image',
    embed: { $type: 'app.bsky.embed.images', images: [{ image, alt: 'test image' }] },
    createdAt: new Date().toISOString()
  })
  await network.processAll()

  const mod = network.ozone.getModClient()
  const blobCid = image.ref.toString()
  const record = { $type: 'com.atproto.repo.strongRef', uri: post.uri, cid: post.cid }
  const account = { $type: 'com.atproto.admin.defs#repoRef', did }
  const takedown = { $type: 'tools.ozone.moderation.defs#modEventTakedown', comment: 'atcdn test' }
  const reverse = { $type: 'tools.ozone.moderation.defs#modEventReverseTakedown', comment: 'atcdn test' }
  const commands = {
    '/takedown-record': () => mod.emitEvent({ event: takedown, subject: record, subjectBlobCids: [blobCid] }, 'moderator'),
    '/reverse-record': () => mod.emitEvent({ event: reverse, subject: record, subjectBlobCids: [blobCid] }, 'moderator'),
    '/takedown-account': () => mod.emitEvent({ event: takedown, subject: account }, 'moderator'),
    '/reverse-account': () => mod.emitEvent({ event: reverse, subject: account }, 'moderator'),
    // A temporary takedown: Ozone labels the DID '!suspend' instead of '!takedown'.
    '/suspend-account': () => mod.emitEvent({ event: { ...takedown, durationInHours: 24 }, subject: account }, 'moderator')
  }
  const control = http.createServer(async (req, res) => {
    const command = commands[req.url]
    if (req.method !== 'POST' || !command) {
      res.writeHead(404).end('{"error":"NotFound"}')
      return
    }
    try {
      const event = await command()
      await network.processAll()
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ id: event.id }))
    } catch (err) {
      res.writeHead(500, { 'content-type': 'application/json' })
        .end(JSON.stringify({ error: 'Failed', message: String(err && err.stack || err) }))
    }
  })
  await new Promise((resolve) => control.listen(0, '127.0.0.1', resolve))

  const info = {
    plcUrl: loopback(network.plc.url),
    pdsUrl: loopback(network.pds.url),
    ozoneUrl: loopback(network.ozone.url),
    ozoneDid: network.ozone.ctx.cfg.service.did,
    controlUrl: `http://127.0.0.1:${control.address().port}`,
    did,
    postUri: post.uri,
    postCid: post.cid,
    blobCid,
    startSeconds: Number(process.hrtime.bigint() - started) / 1e9
  }
  process.stdout.write(JSON.stringify(info) + '\n')

  const stop = async () => {
    control.close()
    await network.close()
    process.exit(0)
  }
  process.on('SIGTERM', stop)
  process.on('SIGINT', stop)
}

main().catch((err) => {
  console.error(err)
  process.exit(1)
})
