// The request path's Prometheus counters and histograms (rendered by hand at scrape time): exact
// text format, cumulative buckets, escaped label values.
import t from 'tap';
import { CounterFamily, HistogramFamily, escapeLabelValue } from '../../src/usage/metric-family.js';

t.test('a counter: HELP and TYPE, one line per label set, values added up', async (t) => {
  const c = new CounterFamily('x_requests_total', 'Requests', ['route', 'status', 'key']);
  t.equal(c.render(), '# HELP x_requests_total Requests\n# TYPE x_requests_total counter\n', 'no series yet: only the header');
  c.inc(1, '/v1/chat/completions', '200', 'alice');
  c.inc(1, '/v1/chat/completions', '200', 'alice');
  c.inc(1, '/v1/chat/completions', '429', 'alice');
  c.inc(5, '/v1/models', '200', '');
  t.equal(
    c.render(),
    [
      '# HELP x_requests_total Requests',
      '# TYPE x_requests_total counter',
      'x_requests_total{route="/v1/chat/completions",status="200",key="alice"} 2',
      'x_requests_total{route="/v1/chat/completions",status="429",key="alice"} 1',
      'x_requests_total{route="/v1/models",status="200",key=""} 5',
      '',
    ].join('\n'),
  );
});

t.test('label sets that only differ in where the values split stay apart', async (t) => {
  const c = new CounterFamily('x_total', 'x', ['a', 'b']);
  c.inc(1, 'ab', 'c');
  c.inc(1, 'a', 'bc');
  t.match(c.render(), 'x_total{a="ab",b="c"} 1\nx_total{a="a",b="bc"} 1\n');
});

t.test('a client-chosen label value cannot break the format', async (t) => {
  t.equal(escapeLabelValue('a"b\\c\nd'), 'a\\"b\\\\c\\nd');
  const c = new CounterFamily('x_tokens_total', 'Tokens', ['key', 'model', 'kind']);
  c.inc(3, 'k', 'evil"} 1\nx_tokens_total{model="x', 'prompt');
  const lines = c.render().trimEnd().split('\n');
  t.equal(lines.length, 3, 'still one line for the series');
  t.equal(lines[2], 'x_tokens_total{key="k",model="evil\\"} 1\\nx_tokens_total{model=\\"x",kind="prompt"} 3');
});

t.test('a histogram: cumulative buckets, +Inf, sum and count per label set', async (t) => {
  const h = new HistogramFamily('x_seconds', 'Duration', ['route'], [0.1, 1, 0.5]);
  for (const v of [0.05, 0.1, 0.3, 0.7, 2]) h.observe(v, '/a');
  h.observe(0.2, '/b');
  t.equal(
    h.render(),
    [
      '# HELP x_seconds Duration',
      '# TYPE x_seconds histogram',
      'x_seconds_bucket{route="/a",le="0.1"} 2',
      'x_seconds_bucket{route="/a",le="0.5"} 3',
      'x_seconds_bucket{route="/a",le="1"} 4',
      'x_seconds_bucket{route="/a",le="+Inf"} 5',
      'x_seconds_sum{route="/a"} 3.15',
      'x_seconds_count{route="/a"} 5',
      'x_seconds_bucket{route="/b",le="0.1"} 0',
      'x_seconds_bucket{route="/b",le="0.5"} 1',
      'x_seconds_bucket{route="/b",le="1"} 1',
      'x_seconds_bucket{route="/b",le="+Inf"} 1',
      'x_seconds_sum{route="/b"} 0.2',
      'x_seconds_count{route="/b"} 1',
      '',
    ].join('\n'),
    'a value equal to a bound counts in that bucket (le = less or equal)',
  );
});
