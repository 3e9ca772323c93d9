// Load a page in the system's headless Chromium and report every <img> on it.
//
//   node render.js PAGE_URL USER_DATA_DIR
//
// Prints one JSON object on stdout:
//   {"images": [{"id", "src", "complete", "naturalWidth", "naturalHeight"}],
//    "responses": {url: {"status", "contentType"}}}
// playwright-core only drives the browser: it never downloads one (CHROMIUM below).
'use strict'

const { chromium } = require('playwright-core')

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium'
const ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync']

async function main () {
  const [pageUrl, userDataDir] = process.argv.slice(2)
  if (!pageUrl || !userDataDir) throw new Error('usage: node render.js PAGE_URL USER_DATA_DIR')
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM, headless: true, args: ARGS, timeout: 60000
  })
  try {
    const responses = {}
    const page = await context.newPage()
    page.on('response', (res) => {
      responses[res.url()] = { status: res.status(), contentType: res.headers()['content-type'] || null }
    })
    // 'load' fires once every <img> has either loaded or failed.
    await page.goto(pageUrl, { waitUntil: 'load', timeout: 120000 })
    const images = await page.$$eval('img', (imgs) => imgs.map((img) => ({
      id: img.id,
      src: img.currentSrc || img.src,
      complete: img.complete,
      naturalWidth: img.naturalWidth,
      naturalHeight: img.naturalHeight
    })))
    process.stdout.write(JSON.stringify({ images, responses }) + '\n')
  } finally {
    await context.close()
  }
}

main().catch((err) => {
  console.error(err)
  process.exit(1)
})
