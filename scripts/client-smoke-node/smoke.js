#!/usr/bin/env node
// Drives runnerbean with an existing Node.js beanstalkd client library (node-beanstalk,
// pinned in package.json beside this file), unmodified, to show that a Node worker written
// for beanstalkd works unchanged: tubes, put with priority/delay/ttr, reserve and
// reserve-with-timeout (and TIMED_OUT), release with delay, bury, kick, touch, the peeks,
// stats-job / stats-tube / stats values, list-tubes, pause-tube, binary and 60 KiB bodies
// byte for byte, JOB_TOO_BIG, and NOT_FOUND as the library reports it (null or false).
//
// Usage: node smoke.js [path/to/runnerbean]      (default target/release/runnerbean)
//        node smoke.js --c [path/to/beanstalkd]  (default beanstalkd on PATH; runs the same
//                                                 flow once, to show the checks are about
//                                                 beanstalkd behaviour)
// `run` beside this file installs the library outside the repository and sets NODE_PATH.
// Each server is started on 127.0.0.1 with an ephemeral port (-p 0 -V, the port read from
// its `bind ... :PORT` line) and -z 61440, and stopped by its PID, also on failure. Exits
// non-zero with a message on the first difference; prints one line per server on success.

'use strict';

const { spawn } = require('child_process');
const path = require('path');
const util = require('util');

let nb;
try {
  nb = require('node-beanstalk');
} catch (e) {
  console.error('client-smoke-node: cannot load node-beanstalk; use scripts/client-smoke-node/run, ' +
    'or install it (npm install --prefix DIR --no-package-lock node-beanstalk@1.6.7) and set NODE_PATH=DIR/node_modules');
  process.exit(2);
}
const LIB_VERSION = require('node-beanstalk/package.json').version;

const MAX_JOB = 61440;          // -z: 60 KiB, so the 60 KiB body is exactly at the limit
const STEP_LIMIT_MS = 15000;    // a whole flow against one server must finish within this

class Failure extends Error {}
const live = new Set();         // servers started and not yet stopped
let step = 'start';
let failing = false;
let current = '';               // which server the flow is talking to, for messages

function fail(msg) {
  throw new Failure(`${step}: ${msg}`);
}

function show(v) {
  if (Buffer.isBuffer(v)) return `<${v.length} bytes ${JSON.stringify(v.subarray(0, 24).toString('latin1'))}...>`;
  return util.inspect(v, { depth: 4, breakLength: Infinity });
}

function eq(what, got, want) {
  step = what;
  if (Buffer.isBuffer(want)) {
    if (!Buffer.isBuffer(got)) fail(`got ${show(got)}, want a Buffer of ${want.length} bytes`);
    if (!got.equals(want)) {
      let i = 0;
      while (i < got.length && i < want.length && got[i] === want[i]) i++;
      fail(`body differs: got ${got.length} bytes, want ${want.length}; first difference at byte ${i} ` +
        `(got ${got[i] === undefined ? 'end' : '0x' + got[i].toString(16)}, want ${want[i] === undefined ? 'end' : '0x' + want[i].toString(16)})`);
    }
    return;
  }
  if (!util.isDeepStrictEqual(got, want)) fail(`got ${show(got)}, want ${show(want)}`);
}

// The job as the library hands it over, with a Buffer payload (identity serializer).
function job(what, got, id, body) {
  step = what;
  if (got === null || typeof got !== 'object') fail(`got ${show(got)}, want job ${id}`);
  eq(`${what}: id`, got.id, id);
  eq(`${what}: body`, got.payload, Buffer.isBuffer(body) ? body : Buffer.from(body));
}

// Some keys of a YAML dictionary (stats, stats-job, stats-tube) as the library parsed it.
function fields(what, got, want) {
  step = what;
  if (got === null || typeof got !== 'object') fail(`got ${show(got)}, want a dictionary`);
  for (const [k, v] of Object.entries(want)) eq(`${what}: ${k}`, got[k], v);
}

const STATS_JOB_KEYS = ['id', 'tube', 'state', 'pri', 'age', 'delay', 'ttr', 'time-left', 'file',
  'reserves', 'timeouts', 'releases', 'buries', 'kicks'];
const STATS_TUBE_KEYS = ['name', 'current-jobs-urgent', 'current-jobs-ready', 'current-jobs-reserved',
  'current-jobs-delayed', 'current-jobs-buried', 'total-jobs', 'current-using', 'current-watching',
  'current-waiting', 'cmd-delete', 'cmd-pause-tube', 'pause', 'pause-time-left'];

function statsJob(what, got, want) {
  if (got !== null && typeof got === 'object') eq(`${what}: keys`, Object.keys(got), STATS_JOB_KEYS);
  fields(what, got, want);
}

function statsTube(what, got, want) {
  if (got !== null && typeof got === 'object') eq(`${what}: keys`, Object.keys(got), STATS_TUBE_KEYS);
  fields(what, got, want);
}

async function rejects(what, promise, code) {
  step = what;
  let got;
  try {
    got = await promise;
  } catch (e) {
    // The library's error classes are compiled to ES5, so `instanceof BeanstalkError` is false;
    // it is told apart by name and carries the server's reply word as `code`.
    if (!(e instanceof Error) || e.name !== 'BeanstalkError') fail(`threw ${e && e.name}: ${e && e.message}, want BeanstalkError ${code}`);
    eq(`${what}: error code`, e.code, code);
    return;
  }
  fail(`resolved to ${show(got)}, want BeanstalkError ${code}`);
}

async function timed(promise) {
  const t0 = Date.now();
  const value = await promise;
  return [value, Date.now() - t0];
}

function within(what, ms, lo, hi) {
  step = what;
  if (ms < lo || ms > hi) fail(`took ${ms} ms, want ${lo}..${hi} ms`);
}

// Bytes a parser could trip over: CR LF, NUL, a fake reply line, high bytes; starts with NUL
// and ends with CR LF.
function binaryBody() {
  return Buffer.concat([
    Buffer.from([0x00, 0x0d, 0x0a, 0x00]),
    Buffer.from('RESERVED 1 2\r\n\r\n'),
    Buffer.from([0xff, 0xfe, 0x00, 0x80, 0x0d, 0x00, 0x0a]),
    Buffer.from('OK 3\r\n---\r\n'),
    Buffer.from([0x00, 0x00, 0x0d, 0x0a]),
  ]);
}

// n bytes from a fixed linear congruential sequence, with CR LF pairs and NULs sprinkled in.
function bigBody(n) {
  const b = Buffer.alloc(n);
  let x = 12345;
  for (let i = 0; i < n; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    b[i] = x >>> 24;
  }
  for (let i = 100; i + 1 < n; i += 997) { b[i] = 0x0d; b[i + 1] = 0x0a; b[i + 2] = 0x00; }
  b[n - 2] = 0x0d; b[n - 1] = 0x0a;
  return b;
}

function start(binary, flags) {
  return new Promise((resolve, reject) => {
    const server = spawn(binary, ['-l', '127.0.0.1', '-p', '0', '-V', '-z', String(MAX_JOB), ...flags],
      { stdio: ['ignore', 'pipe', 'ignore'] });
    live.add(server);
    server.on('exit', () => live.delete(server));
    let buf = '';
    let bound = false;
    const timer = setTimeout(() => reject(new Failure(`${binary} printed no bind line within 5 s`)), 5000);
    server.on('error', (e) => { clearTimeout(timer); reject(new Failure(`cannot start ${binary}: ${e.message}`)); });
    server.on('exit', (code, sig) => {
      if (!bound) { clearTimeout(timer); reject(new Failure(`${binary} exited (${code ?? sig}) before binding`)); }
    });
    server.stdout.setEncoding('utf8');
    server.stdout.on('data', (chunk) => {      // keep draining so -V logging never blocks it
      if (bound) return;
      buf += chunk;
      const m = /^bind .*:(\d+)$/m.exec(buf);
      if (m) { bound = true; clearTimeout(timer); resolve([server, Number(m[1])]); }
    });
  });
}

function stop(server) {
  return new Promise((resolve) => {
    if (server.exitCode !== null || server.signalCode !== null) return resolve();
    server.once('exit', () => resolve());
    try { process.kill(server.pid, 'SIGKILL'); } catch (e) { resolve(); }
  });
}

const identity = {
  serialize: (v) => (Buffer.isBuffer(v) ? v : Buffer.from(String(v))),
  deserialize: (b) => b,
};

async function client(port) {
  const c = new nb.Client({
    host: '127.0.0.1', port, serializer: identity,
    maxPayloadSize: 1 << 20,     // let the server, not the library, refuse an oversized job
    dataReadTimeoutMs: 5000,
  });
  await c.connect();
  return c;
}

async function flow(port, expect) {
  const p = await client(port);   // producer
  const w = await client(port);   // worker
  // A server counts a connection once it has accepted it, which a reply
  // proves; connect() alone does not.
  await p.listTubesWatched();
  await w.listTubesWatched();

  step = 'stats';
  const s0 = await p.stats();
  fields('stats at start', s0, {
    'max-job-size': MAX_JOB, 'current-connections': 2, 'total-connections': 2, 'total-jobs': 0,
    'current-tubes': 1, 'current-jobs-ready': 0,
  });
  if (expect.io) eq('stats runnerbean-io', s0['runnerbean-io'], expect.io);
  if (expect.version) eq('stats version', s0.version, expect.version);
  else if (!/^1\.1[23]$/.test(String(s0.version))) fail(`version ${show(s0.version)}, want 1.12 or 1.13`);

  // Tubes: the producer uses "emails"; the worker watches "emails" and "sms", not "default".
  eq('use emails', await p.use('emails'), 'emails');
  eq('list-tube-used', await p.listTubeUsed(), 'emails');
  eq('watch emails', await w.watch('emails'), 2);
  eq('watch sms', await w.watch('sms'), 3);
  eq('ignore default', await w.ignore('default'), true);
  // beanstalkd fills the hole an ignored tube leaves with the last watched tube.
  eq('list-tubes-watched', await w.listTubesWatched(), ['sms', 'emails']);
  eq('ignore sms', await w.ignore('sms'), true);
  eq('ignore the last watched tube (NOT_IGNORED)', await w.ignore('emails'), false);
  eq('watch sms again', await w.watch('sms'), 2);
  eq('list-tubes-watched again', await w.listTubesWatched(), ['emails', 'sms']);
  eq('list-tubes', await p.listTubes(), ['default', 'emails', 'sms']);

  // put(payload, ttr, priority, delay)
  eq('put alpha', await p.put('alpha', 5, 10, 0), { id: 1, state: 'ready' });
  eq('put bravo', await p.put('bravo', 3, 5, 0), { id: 2, state: 'ready' });
  eq('put charlie delayed', await p.put('charlie', 7, 0, 3600), { id: 3, state: 'delayed' });
  statsJob('stats-job 3 (delayed)', await p.statsJob(3), {
    id: 3, tube: 'emails', state: 'delayed', pri: 0, age: 0, delay: 3600, ttr: 7, 'time-left': 3599,
    file: 0, reserves: 0, timeouts: 0, releases: 0, buries: 0, kicks: 0,
  });
  job('peek-ready (lowest pri first)', await p.peekReady(), 2, 'bravo');
  job('peek-delayed', await p.peekDelayed(), 3, 'charlie');
  eq('peek-buried with none (NOT_FOUND)', await p.peekBuried(), null);
  statsTube('stats-tube emails', await p.statsTube('emails'), {
    name: 'emails', 'current-jobs-urgent': 2, 'current-jobs-ready': 2, 'current-jobs-reserved': 0,
    'current-jobs-delayed': 1, 'current-jobs-buried': 0, 'total-jobs': 3, 'current-using': 1,
    'current-watching': 1, 'current-waiting': 0, 'cmd-delete': 0, 'cmd-pause-tube': 0, pause: 0,
    'pause-time-left': 0,
  });

  // Worker: reserve, touch, release with a delay, bury.
  job('reserve-with-timeout 0', await w.reserveWithTimeout(0), 2, 'bravo');
  statsJob('stats-job 2 (reserved)', await w.statsJob(2), {
    id: 2, tube: 'emails', state: 'reserved', pri: 5, delay: 0, ttr: 3, 'time-left': 2, reserves: 1,
    timeouts: 0, releases: 0, buries: 0, kicks: 0,
  });
  eq('touch 2', await w.touch(2), true);
  eq('release 2 delay 1', await w.release(2, 5, 1), 'delayed');
  statsJob('stats-job 2 (released with delay)', await w.statsJob(2), {
    state: 'delayed', pri: 5, delay: 1, 'time-left': 0, reserves: 1, releases: 1,
  });
  job('reserve', await w.reserve(), 1, 'alpha');
  eq('bury 1 pri 20', await w.bury(1, 20), true);
  job('peek-buried', await p.peekBuried(), 1, 'alpha');
  statsJob('stats-job 1 (buried)', await p.statsJob(1), {
    id: 1, tube: 'emails', state: 'buried', pri: 20, ttr: 5, reserves: 1, releases: 0, buries: 1, kicks: 0,
  });
  eq('reserve-with-timeout 0, nothing ready (TIMED_OUT)', await w.reserveWithTimeout(0), null);
  let [got, ms] = await timed(w.reserveWithTimeout(3));
  job('reserve-with-timeout 3 gets the released job once its delay is over', got, 2, 'bravo');
  within('release delay 1 honoured', ms, 500, 2500);
  eq('delete 2', await w.delete(2), true);

  // NOT_FOUND, as node-beanstalk reports it: null for commands that return a job, dictionary
  // or state, false for those that return a flag.
  eq('delete 2 again (NOT_FOUND)', await w.delete(2), false);
  eq('peek 2 (NOT_FOUND)', await p.peek(2), null);
  eq('stats-job 2 (NOT_FOUND)', await p.statsJob(2), null);
  eq('touch 2 (NOT_FOUND)', await w.touch(2), false);
  eq('release 2 (NOT_FOUND)', await w.release(2, 0, 0), null);
  eq('bury 2 (NOT_FOUND)', await w.bury(2, 0), false);
  eq('reserve-job 2 (NOT_FOUND)', await w.reserveJob(2), null);
  eq('kick-job 2 (NOT_FOUND)', await p.kickJob(2), false);
  eq('peek 999 (NOT_FOUND)', await p.peek(999), null);

  // kick: buried jobs first, then delayed ones.
  eq('kick 10 (the buried job)', await p.kick(10), 1);
  statsJob('stats-job 1 (kicked)', await p.statsJob(1), { state: 'ready', pri: 20, buries: 1, kicks: 1 });
  eq('kick 10 (the delayed job)', await p.kick(10), 1);
  statsJob('stats-job 3 (kicked)', await p.statsJob(3), { state: 'ready', pri: 0, kicks: 1 });
  eq('kick 10 (nothing left)', await p.kick(10), 0);
  job('peek-ready after kicks', await p.peekReady(), 3, 'charlie');

  // pause-tube
  eq('pause-tube emails 1', await p.pauseTube('emails', 1), true);
  statsTube('stats-tube emails (paused)', await p.statsTube('emails'), {
    name: 'emails', 'current-jobs-urgent': 2, 'current-jobs-ready': 2, 'current-jobs-reserved': 0,
    'current-jobs-delayed': 0, 'current-jobs-buried': 0, 'total-jobs': 3, 'current-using': 1,
    'current-watching': 1, 'current-waiting': 0, 'cmd-delete': 1, 'cmd-pause-tube': 1, pause: 1,
    'pause-time-left': 0,
  });
  eq('reserve-with-timeout 0 on a paused tube (TIMED_OUT)', await w.reserveWithTimeout(0), null);
  eq('pause-tube nosuch (NOT_FOUND)', await p.pauseTube('nosuch', 1), false);
  eq('stats-tube nosuch (NOT_FOUND)', await p.statsTube('nosuch'), null);
  [got, ms] = await timed(w.reserveWithTimeout(3));
  job('reserve-with-timeout 3 once the pause is over', got, 3, 'charlie');
  within('pause 1 honoured', ms, 500, 2500);
  eq('delete 3', await w.delete(3), true);
  job('reserve the last job of emails', await w.reserve(), 1, 'alpha');
  eq('delete 1', await w.delete(1), true);

  // A binary body through "sms", put while the worker is already waiting for it.
  eq('use sms', await p.use('sms'), 'sms');
  const bin = binaryBody();
  const waiting = w.reserveWithTimeout(5);
  step = 'worker waiting on sms';
  let tube;
  for (let i = 0; i < 100; i++) {
    tube = await p.statsTube('sms');
    if (tube && tube['current-waiting'] === 1) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  fields('stats-tube sms while the worker waits', tube, { 'current-waiting': 1, 'current-watching': 1, 'current-using': 1 });
  eq('put binary', await p.put(bin, 10, 100, 0), { id: 4, state: 'ready' });
  job('waiting worker gets the binary job', await waiting, 4, bin);
  eq('release 4', await w.release(4, 100, 0), 'ready');
  job('peek-ready binary', await p.peekReady(), 4, bin);
  job('reserve binary again', await w.reserve(), 4, bin);
  statsJob('stats-job 4', await w.statsJob(4), { tube: 'sms', state: 'reserved', pri: 100, reserves: 2, releases: 1 });
  eq('delete 4', await w.delete(4), true);

  // A body of exactly -z bytes, then one byte more.
  const big = bigBody(MAX_JOB);
  eq('put 60 KiB', await p.put(big, 10, 100, 0), { id: 5, state: 'ready' });
  job('peek 60 KiB', await p.peek(5), 5, big);
  job('reserve 60 KiB', await w.reserveWithTimeout(1), 5, big);
  eq('delete 5', await w.delete(5), true);
  await rejects('put -z + 1 bytes (JOB_TOO_BIG)', p.put(Buffer.alloc(MAX_JOB + 1, 0x41), 10, 100, 0), 'JOB_TOO_BIG');
  eq('list-tube-used after JOB_TOO_BIG', await p.listTubeUsed(), 'sms');
  eq('put after JOB_TOO_BIG', await p.put('after', 10, 100, 0), { id: 6, state: 'ready' });
  job('reserve after JOB_TOO_BIG', await w.reserveWithTimeout(0), 6, 'after');
  eq('delete 6', await w.delete(6), true);

  [got, ms] = await timed(w.reserveWithTimeout(1));
  eq('reserve-with-timeout 1, nothing ready (TIMED_OUT)', got, null);
  within('TIMED_OUT after about 1 s', ms, 800, 2500);

  fields('stats at end', await p.stats(), {
    'current-jobs-urgent': 0, 'current-jobs-ready': 0, 'current-jobs-reserved': 0,
    'current-jobs-delayed': 0, 'current-jobs-buried': 0,
    'cmd-put': 7, 'cmd-peek': 3, 'cmd-peek-ready': 3, 'cmd-peek-delayed': 1, 'cmd-peek-buried': 2,
    'cmd-reserve': 3, 'cmd-reserve-with-timeout': 9, 'cmd-delete': 7, 'cmd-release': 3,
    'cmd-use': 2, 'cmd-watch': 3, 'cmd-ignore': 3, 'cmd-bury': 2, 'cmd-kick': 3, 'cmd-touch': 2,
    'cmd-stats': 2, 'cmd-list-tubes': 1, 'cmd-list-tube-used': 2, 'cmd-list-tubes-watched': 4,
    'cmd-pause-tube': 2, 'job-timeouts': 0, 'total-jobs': 6, 'current-tubes': 3,
    'current-connections': 2, 'current-producers': 1, 'current-workers': 1, 'current-waiting': 0,
    'total-connections': 2,
  });

  step = 'disconnect';
  await p.disconnect();
  await w.disconnect();
}

async function runOne(binary, flags, label, expect) {
  step = `start ${label}`;
  current = label;
  const t0 = Date.now();
  const [server, port] = await start(binary, flags);
  let timer;
  try {
    await Promise.race([
      flow(port, expect),
      new Promise((_, reject) => {
        server.once('exit', (code, sig) => reject(new Failure(`server exited (${sig || code}); last check reached: ${step}`)));
        timer = setTimeout(() => reject(new Failure(`no answer within ${STEP_LIMIT_MS / 1000} s; last check reached: ${step}`)), STEP_LIMIT_MS);
      }),
    ]);
  } catch (e) {
    failing = true;   // the library's sockets see ECONNRESET once the server is stopped below
    if (e instanceof Failure) e.message = `${label}: ${e.message}`;
    else e = new Failure(`${label}: ${step}: ${e && e.stack || e}`);
    throw e;
  } finally {
    clearTimeout(timer);
    await stop(server);
  }
  console.log(`client-smoke-node: node-beanstalk ${LIB_VERSION} against ${label}: ok (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
}

async function main() {
  const args = process.argv.slice(2);
  const againstC = args[0] === '--c';
  if (againstC) args.shift();
  if (againstC) {
    await runOne(args[0] || 'beanstalkd', [], 'C beanstalkd', {});
  } else {
    const binary = args[0] || path.resolve(__dirname, '..', '..', 'target', 'release', 'runnerbean');
    await runOne(binary, ['--io', 'uring'], 'runnerbean --io uring', { io: 'io_uring', version: '1.13' });
    await runOne(binary, ['--io', 'epoll'], 'runnerbean --io epoll', { io: 'epoll', version: '1.13' });
    await runOne(binary, ['--io', 'uring', '--cores', '4'], 'runnerbean --io uring --cores 4', { io: 'io_uring', version: '1.13' });
    await runOne(binary, ['--io', 'epoll', '--cores', '4'], 'runnerbean --io epoll --cores 4', { io: 'epoll', version: '1.13' });
  }
}

function killAll() {
  for (const s of live) { try { process.kill(s.pid, 'SIGKILL'); } catch (e) { /* already gone */ } }
}
process.on('exit', killAll);
// node-beanstalk emits socket errors (a server that died, or was stopped after a failure) as an
// 'error' event nobody can listen to through its API; report them as a failure at this step.
process.on('uncaughtException', (e) => {
  if (failing && e && (e.code === 'ECONNRESET' || e.code === 'EPIPE')) return;
  console.error(`client-smoke-node: ${current}: connection error ${e && e.message || e}; last check reached: ${step}`);
  killAll();
  process.exit(1);
});
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => { killAll(); process.exit(1); });

main().then(
  () => process.exit(0),
  (e) => {
    console.error(`client-smoke-node: ${e instanceof Failure ? e.message : `${step}: ${e && e.stack || e}`}`);
    killAll();
    process.exit(1);
  },
);
