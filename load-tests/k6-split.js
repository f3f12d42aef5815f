// k6 script for the switchyard demo: a constant arrival rate for a bounded time, every request
// with a rotating x-user-id (the demo's sticky key), counting "blue" and "green" answers by the
// first word of the body (the demo backends answer "blue GET /path" or "green GET /path").
//
// Pass --no-usage-report (or K6_NO_USAGE_REPORT=true) so k6 does not try to reach the internet.
//   k6 run --no-usage-report load-tests/k6-split.js
//   k6 run --no-usage-report -e RATE=1000 -e DURATION=30s -e BASE_URL=http://127.0.0.1:18080/ load-tests/k6-split.js
//
// Thresholds (k6 exits non-zero when one fails): under 1% failed requests, p99 under P99_MS
// (default 100 ms; loopback), and at least 99% of the checks passing.

import http from 'k6/http';
import { check } from 'k6';
import { Counter } from 'k6/metrics';

const BASE_URL = __ENV.BASE_URL || 'http://127.0.0.1:18080/';
const RATE = parseInt(__ENV.RATE || '500', 10);
const DURATION = __ENV.DURATION || '10s';
const USERS = parseInt(__ENV.USERS || '10000', 10);
const P99_MS = parseInt(__ENV.P99_MS || '100', 10);

const blue = new Counter('split_blue');
const green = new Counter('split_green');
const other = new Counter('split_other');

export const options = {
  scenarios: {
    split: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: DURATION,
      preAllocatedVUs: 20,
      maxVUs: 200,
      gracefulStop: '5s',
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.01'],
    http_req_duration: [`p(99)<${P99_MS}`],
    checks: ['rate>0.99'],
  },
  summaryTrendStats: ['avg', 'min', 'med', 'max', 'p(90)', 'p(95)', 'p(99)'],
};

export default function () {
  const user = `user-${(__VU * 7919 + __ITER) % USERS}`;
  const res = http.get(BASE_URL, { headers: { 'x-user-id': user }, timeout: '5s' });
  const word = typeof res.body === 'string' ? res.body.split(/\s/, 1)[0] : '';
  if (word === 'blue') {
    blue.add(1);
  } else if (word === 'green') {
    green.add(1);
  } else {
    other.add(1);
  }
  check(res, { 'status is 2xx': (r) => r.status >= 200 && r.status < 300 });
}

function count(data, name) {
  const m = data.metrics[name];
  return m ? m.values.count : 0;
}

// A short end-of-test summary: request count, failures, latency, the color split, thresholds.
export function handleSummary(data) {
  const reqs = count(data, 'http_reqs');
  const failed = data.metrics.http_req_failed ? data.metrics.http_req_failed.values.rate : 0;
  const dur = data.metrics.http_req_duration ? data.metrics.http_req_duration.values : {};
  const colors = {
    blue: count(data, 'split_blue'),
    green: count(data, 'split_green'),
    other: count(data, 'split_other'),
  };
  const total = colors.blue + colors.green + colors.other;
  const pct = (n) => (total > 0 ? ((100 * n) / total).toFixed(2) : '0.00');
  const ms = (v) => (v === undefined ? 'n/a' : `${v.toFixed(2)} ms`);
  const lines = [
    '',
    '-- switchyard split (k6) --',
    `requests: ${reqs}  failed: ${(100 * failed).toFixed(2)}%  dropped iterations: ${count(data, 'dropped_iterations')}`,
    `latency: p50 ${ms(dur.med)}  p90 ${ms(dur['p(90)'])}  p95 ${ms(dur['p(95)'])}  p99 ${ms(dur['p(99)'])}  max ${ms(dur.max)}`,
    `colors: blue ${colors.blue} (${pct(colors.blue)}%)  green ${colors.green} (${pct(colors.green)}%)  other ${colors.other} (${pct(colors.other)}%)`,
    'thresholds:',
  ];
  for (const [name, m] of Object.entries(data.metrics)) {
    for (const [expr, t] of Object.entries(m.thresholds || {})) {
      lines.push(`  ${t.ok ? 'ok  ' : 'FAIL'} ${name} ${expr}`);
    }
  }
  return { stdout: `${lines.join('\n')}\n` };
}
