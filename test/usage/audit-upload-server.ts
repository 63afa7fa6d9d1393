// A real S3-speaking server for the audit upload's tests: @20minutes/s3rver (the maintained fork of
// s3rver: SigV4 signatures checked, objects on disk, ETag = MD5 of a single PUT) on 127.0.0.1 in a
// temp folder. It can be stopped and started again on the same port with the same objects, which is
// how "the storage is down, then back" is played. Credentials: S3RVER / S3RVER (its built-in account).
import { createRequire } from 'node:module';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { AwsClient } from 'aws4fetch';
import type { S3Target } from '../../src/usage/audit-upload.js';
import { freePort, tempDir, type Teardown } from '../helpers.js';

interface S3rverInstance {
  run(): Promise<AddressInfo>;
  close(): Promise<void>;
}
type S3rverClass = new (options: Record<string, unknown>) => S3rverInstance;
const S3rver = createRequire(import.meta.url)('@20minutes/s3rver') as S3rverClass;

const BUCKET = 'audit';
const ACCESS_KEY_ID = 'S3RVER';
const SECRET_ACCESS_KEY = 'S3RVER';

export interface LocalS3 {
  readonly port: number;
  readonly target: S3Target;
  /** Stops answering (connections refused) until start(); the stored objects stay. */
  stop(): Promise<void>;
  start(): Promise<void>;
  /** GET through the S3 API: status, body and headers. */
  get(key: string): Promise<{ status: number; body: Buffer; headers: Headers }>;
  /** The object keys in the bucket (ListObjectsV2). */
  list(): Promise<string[]>;
}

export async function startLocalS3(t: Teardown, prefix = 'llm-gateway/'): Promise<LocalS3> {
  const directory = join(tempDir(t, 'gw-s3-'), 'store');
  const port = await freePort();
  let server: S3rverInstance | null = null;
  const start = async (): Promise<void> => {
    server = new S3rver({ address: '127.0.0.1', port, silent: true, directory, configureBuckets: [{ name: BUCKET }] });
    await server.run();
  };
  const stop = async (): Promise<void> => {
    const s = server;
    server = null;
    await s?.close();
  };
  await start();
  t.teardown(stop);
  const endpoint = `http://127.0.0.1:${port}`;
  const client = new AwsClient({
    accessKeyId: ACCESS_KEY_ID,
    secretAccessKey: SECRET_ACCESS_KEY,
    service: 's3',
    region: 'auto',
    retries: 0,
  });
  return {
    port,
    target: { endpoint, bucket: BUCKET, prefix, region: 'auto', accessKeyId: ACCESS_KEY_ID, secretAccessKey: SECRET_ACCESS_KEY },
    stop,
    start,
    async get(key) {
      const res = await client.fetch(`${endpoint}/${BUCKET}/${key}`);
      return { status: res.status, body: Buffer.from(await res.arrayBuffer()), headers: res.headers };
    },
    async list() {
      const res = await client.fetch(`${endpoint}/${BUCKET}?list-type=2`);
      const xml = await res.text();
      return [...xml.matchAll(/<Key>([^<]+)<\/Key>/g)].map((m) => m[1]!).sort();
    },
  };
}
