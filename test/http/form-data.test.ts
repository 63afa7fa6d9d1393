// The multipart/form-data reader (src/http/form-data.ts) on the forms RFC 2046 allows and client
// libraries write: preamble and epilogue, quoted boundaries, transport padding, header case, and
// which fields it takes (model, stream: true) and leaves (everything else).
import t from 'tap';
import { boundaryOf, readForm } from '../../src/http/form-data.js';

const B = 'xYz-123';
const TYPE = `multipart/form-data; boundary=${B}`;

function part(headers: string, value: string): string {
  return `--${B}\r\n${headers}\r\n\r\n${value}\r\n`;
}
const FILE = part('Content-Disposition: form-data; name="file"; filename="a.wav"\r\nContent-Type: audio/wav', 'RIFF....');
const END = `--${B}--`;

t.test('the boundary parameter', async (t) => {
  t.equal(boundaryOf(TYPE), B);
  t.equal(boundaryOf('multipart/form-data; charset=utf-8; BOUNDARY="a b:c?"'), 'a b:c?', 'quoted, any case, RFC 2046 characters');
  t.equal(boundaryOf('multipart/form-data;boundary=----WebKitFormBoundary7MA4YWxkTrZu0gW'), '----WebKitFormBoundary7MA4YWxkTrZu0gW');
  t.equal(boundaryOf('multipart/form-data'), undefined, 'none');
  t.equal(boundaryOf('multipart/form-data; boundary='), undefined, 'empty');
  t.equal(boundaryOf('multipart/form-data; boundary="ends with space "'), undefined, 'ends in a space');
  t.equal(boundaryOf(`multipart/form-data; boundary=${'a'.repeat(70)}`), 'a'.repeat(70), '70 characters');
  t.equal(boundaryOf(`multipart/form-data; boundary=${'a'.repeat(71)}`), undefined, '71 characters');
  t.equal(boundaryOf('multipart/form-data; boundary=a{b}'), undefined, 'characters outside RFC 2046');
});

t.test('what is read, and the forms that are whole', async (t) => {
  const read = (body: string, type = TYPE): unknown => readForm(Buffer.from(body, 'latin1'), type);
  const model = part('Content-Disposition: form-data; name="model"', 'whisper-1');
  t.same(read(model + FILE + END), { json: { model: 'whisper-1' } });
  t.same(
    read(FILE + model + part('content-disposition: FORM-DATA; name=stream', 'true') + END),
    {
      json: { model: 'whisper-1', stream: true },
    },
    'header names and values in any case, an unquoted name, stream: true',
  );
  t.same(
    read(FILE + part('Content-Disposition: form-data; name="stream"', 'false') + END),
    { json: {} },
    'stream other than "true": not a stream',
  );
  t.same(read(`a preamble\r\n${FILE}${END}\r\nan epilogue`), { json: {} }, 'preamble and epilogue');
  t.same(read(FILE.replace(`--${B}\r\n`, `--${B}  \t\r\n`) + END), { json: {} }, 'transport padding after a delimiter');
  t.same(read(part('Content-Disposition: form-data; filename="model"; name="file"', 'x') + END), { json: {} }, 'filename= is not name=');
  t.same(read(part('Content-Disposition: form-data; name="model"', '') + FILE + END), { json: { model: '' } }, 'an empty field');
  t.same(read(part('Content-Disposition: form-data; name="mo\\"del"', 'x') + FILE + END), { json: {} }, 'an escaped quote in a name');
  t.same(read(model + FILE + END, 'multipart/form-data'), { problem: 'no_boundary' });
  t.same(read(model + FILE), { problem: 'not_closed' });
  t.same(read(model + FILE.slice(0, -2)), { problem: 'not_closed' }, 'cut inside a part');
  t.same(read(`--${B}`), { problem: 'not_closed' }, 'only the first delimiter');
  t.same(read(`--${B}\r\nContent-Disposition: form-data; name="file"`), { problem: 'not_closed' }, 'cut inside the headers');
  t.same(read(`--${B}xx\r\n` + FILE.slice(B.length + 4) + END), { problem: 'malformed' }, 'a delimiter followed by other text');
  t.same(read(part('Content-Disposition: attachment; name="file"', 'x') + END), { problem: 'malformed' }, 'not form-data');
  t.same(read(part(`X-Long: ${'h'.repeat(17 * 1024)}`, 'x') + END), { problem: 'malformed' }, 'part headers over 16 KiB');
  t.same(read(model + END), { problem: 'no_file' });
  t.same(read(END), { problem: 'no_file' }, 'no parts at all');
  t.same(read(part('Content-Disposition: form-data; name="model"', 'm'.repeat(257)) + FILE + END), {
    problem: 'model_too_long',
    length: 257,
  });
  t.same(
    read(part('Content-Disposition: form-data; name="model"', 'm'.repeat(5000)) + FILE + END),
    {
      problem: 'model_too_long',
      length: 5000,
    },
    'a long one is measured in bytes, never decoded',
  );
});
