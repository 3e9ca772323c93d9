// Load a page in the system's headless Chromium and save a screenshot of it.
//
//   node screenshot.js PAGE_URL OUT_PNG USER_DATA_DIR
//
// Prints {"status", "title", "requests": [urls]} on stdout: every URL the page asked for,
// so a test can check that a page needs nothing beyond itself.
'use strict'

const { chromium } = require('playwright-core')

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium'
const ARGS = ['--no-sandbox', '--disable-gpu', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync']

async function main () {
  const [pageUrl, out, userDataDir] = process.argv.slice(2)
  if (!pageUrl || !out || !userDataDir) throw new Error('usage: node screenshot.js PAGE_URL OUT_PNG USER_DATA_DIR')
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM, headless: true, args: ARGS, timeout: 60000,
    viewport: { width: 1000, height: 1200 }
  })
  try {
    const page = await context.newPage()
    const requests = []
    page.on('request', (req) => requests.push(req.url()))
    const response = await page.goto(pageUrl, { waitUntil: 'load', timeout: 60000 })
    await page.screenshot({ path: out, fullPage: true })
    process.stdout.write(JSON.stringify({ status: response.status(), title: await page.title(), requests }) + '\n')
  } finally {
    await context.close()
  }
}

main().catch((err) => {
  console.error(err)
  process.exit(1)
})
