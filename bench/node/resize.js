// The peer for bench/images.py: sharp (what Bluesky's reference uses) doing the same
// resize on the same files, one image at a time, single-threaded, nothing cached.
// usage: node resize.js '<json: {presets: {name: [w, h, fit, quality]}, files: [...], rounds}>'
const fs = require("fs");
const sharp = require("sharp");

sharp.concurrency(1);
sharp.cache(false);

async function once(buffer, [width, height, fit, quality]) {
  return sharp(buffer)
    .rotate()
    .resize(width, height, { fit, withoutEnlargement: true })
    .jpeg({ quality })
    .toBuffer();
}

async function main() {
  const job = JSON.parse(process.argv[2]);
  const buffers = job.files.map((f) => fs.readFileSync(f));
  const results = {};
  for (const [name, spec] of Object.entries(job.presets)) {
    for (const b of buffers) await once(b, spec); // warm-up: code paths, not results
    const cpu0 = process.cpuUsage();
    const t0 = process.hrtime.bigint();
    let count = 0;
    for (let r = 0; r < job.rounds; r++) {
      for (const b of buffers) { await once(b, spec); count++; }
    }
    const wall = Number(process.hrtime.bigint() - t0) / 1e9;
    const cpu = process.cpuUsage(cpu0);
    results[name] = { images: count, wall, cpu: (cpu.user + cpu.system) / 1e6 };
  }
  process.stdout.write(JSON.stringify(results));
}

main().catch((e) => { console.error(e); process.exit(1); });
