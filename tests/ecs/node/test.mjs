// The official Node ECS SDK (@alicloud/ecs20140526, default ACS3-HMAC-SHA256 signing; the Node
// client signs only host, x-acs-* and content-type) against the fleetrun demo that ../run.sh
// started: RunCommand → DescribeInvocationResults → StopInvocation, DescribeInstances,
// DescribeCommands and the error mapping. Run with `node --test test.mjs`.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { before, test } from 'node:test';
import ecs from '@alicloud/ecs20140526';
import openapi from '@alicloud/openapi-core';

const Client = ecs.default;
const url = process.env.FLEETRUN_ECS_URL;
const password = process.env.FLEETRUN_ECS_ADMIN_PASSWORD;
if (!url || !password) {
  throw new Error('FLEETRUN_ECS_URL / FLEETRUN_ECS_ADMIN_PASSWORD unset: run tests/ecs/run.sh');
}
const HZ = 'cn-hangzhou';
const TERMINAL = new Set(['Success', 'Failed', 'Error', 'Timeout', 'Terminated', 'Cancelled', 'Aborted', 'Invalid']);

/** fleetrun's JSON API as `username` (HTTP Basic). */
async function api(method, path, body, username = 'admin', pw = password) {
  const response = await fetch(`${url}/api/v1${path}`, {
    method,
    headers: {
      authorization: 'Basic ' + Buffer.from(`${username}:${pw}`).toString('base64'),
      ...(body ? { 'content-type': 'application/json' } : {}),
    },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await response.text();
  assert.ok(response.ok, `${method} ${path}: ${response.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

function client(accessKeyId, accessKeySecret) {
  const config = new openapi.$OpenApiUtil.Config({
    accessKeyId,
    accessKeySecret,
    regionId: HZ,
    endpoint: url.replace(/^http:\/\//, ''),
    protocol: 'http',
  });
  return new Client(config);
}

/** The SDK error of a call that must be refused. */
async function refusal(call) {
  try {
    const answer = await call();
    assert.fail(`expected a refusal, got ${JSON.stringify(answer.body)}`);
  } catch (e) {
    if (e instanceof assert.AssertionError) throw e;
    return e;
  }
}

async function eventually(check, what, timeoutMs = 90_000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    last = await check();
    if (last) return last;
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
  assert.fail(`timed out waiting for ${what}; last: ${JSON.stringify(last)}`);
}

async function results(c, invokeId, extra = {}) {
  const r = await c.describeInvocationResults(
    new ecs.DescribeInvocationResultsRequest({ regionId: HZ, invokeId, pageSize: 50, ...extra }),
  );
  return r.body.invocation.invocationResults.invocationResult;
}

async function waitFinished(c, invokeId, count, extra = {}) {
  return eventually(async () => {
    const rows = await results(c, invokeId, extra);
    return rows.length === count && rows.every((r) => TERMINAL.has(r.invocationStatus)) ? rows : null;
  }, `${invokeId} to finish`);
}

let sdk;
let keyId;
let hz;
const username = `ecs-node-${randomBytes(4).toString('hex')}`;

before(async () => {
  const userPassword = randomBytes(18).toString('base64url');
  await api('POST', '/users', { username, password: userPassword, role: 'operator' });
  const key = await api('POST', '/access-keys', { description: 'Node SDK tests' }, username, userPassword);
  keyId = key.access_key_id;
  sdk = client(keyId, key.access_key_secret);
  const { instances } = await api('GET', `/instances?region_id=${HZ}`);
  hz = instances.filter((i) => i.agent.online).map((i) => i.instance_id).sort();
  assert.equal(hz.length, 2, `the demo's two online instances in ${HZ}`);
});

test('RunCommand, DescribeInvocationResults in Base64 and PlainText', async () => {
  const run = await sdk.runCommand(new ecs.RunCommandRequest({
    regionId: HZ,
    type: 'RunShellScript',
    commandContent: 'echo hello {{who}} from {{fleetrun::instance_id}} ✓',
    enableParameter: true,
    parameters: { who: 'node' },
    instanceId: hz,
    timeout: 60,
  }));
  const rows = await waitFinished(sdk, run.body.invokeId, 2);
  const plain = await results(sdk, run.body.invokeId, { contentEncoding: 'PlainText' });

  assert.match(run.body.invokeId, /^t-/);
  assert.deepEqual(rows.map((r) => r.instanceId).sort(), hz);
  for (const row of rows) {
    assert.equal(row.invocationStatus, 'Success');
    assert.equal(row.exitCode, 0);
    assert.equal(Buffer.from(row.output, 'base64').toString(), `hello node from ${row.instanceId} ✓\n`);
  }
  for (const row of plain) assert.equal(row.output, `hello node from ${row.instanceId} ✓\n`);
  const record = await api('GET', `/invocations/${run.body.invokeId}`);
  assert.equal(record.creator, username);
});

test('StopInvocation terminates a running command', async () => {
  const run = await sdk.runCommand(new ecs.RunCommandRequest({
    regionId: HZ, type: 'RunShellScript', commandContent: 'sleep 600', instanceId: [hz[0]], timeout: 900,
  }));
  const invokeId = run.body.invokeId;
  await eventually(async () => (await results(sdk, invokeId))[0]?.invocationStatus === 'Running', 'Running');

  await sdk.stopInvocation(new ecs.StopInvocationRequest({ regionId: HZ, invokeId }));
  const rows = await waitFinished(sdk, invokeId, 1);

  assert.equal(rows[0].invocationStatus, 'Terminated');
  const invocations = await sdk.describeInvocations(new ecs.DescribeInvocationsRequest({ regionId: HZ, invokeId }));
  assert.equal(invocations.body.invocations.invocation[0].invocationStatus, 'Stopped');
});

test('DescribeInstances lists the region and filters by a JSON array of ids', async () => {
  const all = await sdk.describeInstances(new ecs.DescribeInstancesRequest({ regionId: HZ }));
  const one = await sdk.describeInstances(
    new ecs.DescribeInstancesRequest({ regionId: HZ, instanceIds: JSON.stringify([hz[1]]) }),
  );

  assert.deepEqual(all.body.instances.instance.map((i) => i.instanceId).sort(), hz);
  assert.equal(all.body.totalCount, 2);
  for (const instance of all.body.instances.instance) {
    assert.equal(instance.status, 'Running');
    assert.equal(instance.regionId, HZ);
  }
  assert.deepEqual(one.body.instances.instance.map((i) => i.instanceId), [hz[1]]);
});

test('CreateCommand, DescribeCommands, DeleteCommand', async () => {
  const name = `node-${randomBytes(4).toString('hex')}`;
  const created = await sdk.createCommand(new ecs.CreateCommandRequest({
    regionId: HZ, name, type: 'RunShellScript', commandContent: Buffer.from('echo node ✓').toString('base64'),
  }));
  const commandId = created.body.commandId;

  const described = await sdk.describeCommands(
    new ecs.DescribeCommandsRequest({ regionId: HZ, commandId, contentEncoding: 'PlainText' }),
  );
  await sdk.deleteCommand(new ecs.DeleteCommandRequest({ regionId: HZ, commandId }));
  const after = await sdk.describeCommands(new ecs.DescribeCommandsRequest({ regionId: HZ, commandId }));

  assert.equal(described.body.totalCount, 1);
  assert.equal(described.body.commands.command[0].name, name);
  assert.equal(described.body.commands.command[0].commandContent, 'echo node ✓');
  assert.equal(after.body.totalCount, 0);
});

test('errors arrive as the SDK error with code and status', async () => {
  const before = (await api('GET', '/invocations?page_size=1')).total;
  const unknown = await refusal(() => sdk.runCommand(new ecs.RunCommandRequest({
    regionId: HZ, type: 'RunShellScript', commandContent: 'echo never', instanceId: ['i-doesnotexist'],
  })));
  const wrongSecret = await refusal(() => client(keyId, 'not-the-secret')
    .describeRegions(new ecs.DescribeRegionsRequest({})));

  assert.equal(unknown.code, 'InvalidInstance.NotFound');
  assert.equal(unknown.statusCode, 404);
  assert.ok(unknown.data.RequestId);
  assert.equal(wrongSecret.code, 'SignatureDoesNotMatch');
  assert.equal(wrongSecret.statusCode, 400);
  assert.equal((await api('GET', '/invocations?page_size=1')).total, before);
});
