// The official Node ECS SDK (@alicloud/ecs20140526, default ACS3-HMAC-SHA256 signing; the Node
// client signs only host, x-acs-* and content-type) against the fleetrun demo that ../run.sh
// started. Every one of the 18 actions fleetrun serves is called here and its answer read through
// the SDK's parsed model: running, retained commands, invocations, the Describe actions with
// MaxResults/NextToken paging, activations and the managed instances they enrol, and refusals.
// Only the throwaway instances registered here are deregistered, never the demo's four agents.
// Run with `node --test test.mjs`.
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
const endpoint = url.replace(/^http:\/\//, '').replace(/\/$/, '');
const HZ = 'cn-hangzhou';
const EU = 'eu-central-1';
const TERMINAL = new Set(['Success', 'Failed', 'Error', 'Timeout', 'Terminated', 'Cancelled', 'Aborted', 'Invalid']);

const unique = (prefix) => `${prefix}-${randomBytes(4).toString('hex')}`;
const b64 = (text) => Buffer.from(text).toString('base64');
const unb64 = (text) => Buffer.from(text, 'base64').toString();
const sortedIds = (rows) => rows.map((r) => r.instanceId).sort();

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

async function invocationCount() {
  return (await api('GET', '/invocations?page_size=1')).total;
}

function client(accessKeyId, accessKeySecret) {
  const config = new openapi.$OpenApiUtil.Config({
    accessKeyId,
    accessKeySecret,
    regionId: HZ,
    endpoint,
    protocol: 'http',
  });
  return new Client(config);
}

/** A new user with `role`, an AccessKey of theirs, and the SDK client signing with it. */
async function userWithKey(role) {
  const name = unique(`ecs-node-${role}`);
  const userPassword = randomBytes(18).toString('base64url');
  await api('POST', '/users', { username: name, password: userPassword, role });
  const key = await api('POST', '/access-keys', { description: `Node SDK tests (${role})` }, name, userPassword);
  return { username: name, keyId: key.access_key_id, sdk: client(key.access_key_id, key.access_key_secret) };
}

/** Enrols a throwaway instance as an agent would (`POST /agent/v1/register`); never connects. */
async function register(activationId, activationCode, hostname) {
  return fetch(`${url}/agent/v1/register`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      activation_id: activationId,
      activation_code: activationCode,
      hostname,
      os_type: 'linux',
      os_name: 'Throwaway Linux',
      ip_addresses: [],
      agent_version: '0.0.0-node',
    }),
  });
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

/**
 * Walks MaxResults/NextToken: `fetchPage(token)` answers `{ items, nextToken }` for one page of
 * at most `maxResults`. Goes on until NextToken is "" (the last page); returns the items and
 * how many pages it took.
 */
async function pagesByToken(maxResults, fetchPage) {
  const items = [];
  let token;
  let pages = 0;
  do {
    const page = await fetchPage(token);
    pages += 1;
    assert.equal(typeof page.nextToken, 'string', 'NextToken missing (it must be "" on the last page)');
    assert.ok(page.items.length <= maxResults, `page ${pages} has ${page.items.length} items, MaxResults ${maxResults}`);
    if (page.nextToken) assert.equal(page.items.length, maxResults, `page ${pages} is short before the end`);
    items.push(...page.items);
    token = page.nextToken;
    assert.ok(pages < 100, 'pagination does not end');
  } while (token);
  return { items, pages };
}

async function run(c, instanceId, commandContent, extra = {}) {
  const r = await c.runCommand(new ecs.RunCommandRequest({
    regionId: HZ, type: 'RunShellScript', commandContent, instanceId, timeout: 60, ...extra,
  }));
  return r.body.invokeId;
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

async function createCommand(c, extra) {
  const r = await c.createCommand(new ecs.CreateCommandRequest({ regionId: HZ, type: 'RunShellScript', ...extra }));
  return r.body.commandId;
}

async function describeCommand(c, commandId, extra = {}) {
  const r = await c.describeCommands(new ecs.DescribeCommandsRequest({ regionId: HZ, commandId, ...extra }));
  assert.equal(r.body.totalCount, 1, JSON.stringify(r.body));
  return r.body.commands.command[0];
}

async function deleteCommand(c, commandId) {
  await c.deleteCommand(new ecs.DeleteCommandRequest({ regionId: HZ, commandId }));
}

async function describeActivations(c, regionId, extra = {}) {
  const r = await c.describeActivations(new ecs.DescribeActivationsRequest({ regionId, ...extra }));
  return r.body;
}

async function describeManaged(c, regionId, extra = {}) {
  const r = await c.describeManagedInstances(new ecs.DescribeManagedInstancesRequest({ regionId, ...extra }));
  return r.body;
}

let sdk; // the operator's: most calls
let admin; // an admin's: activations and deregistration
let viewer; // a viewer's: may describe, not run
let username;
let keyId;
let hz;

before(async () => {
  const operator = await userWithKey('operator');
  ({ sdk, username, keyId } = operator);
  admin = (await userWithKey('admin')).sdk;
  viewer = (await userWithKey('viewer')).sdk;
  const { instances } = await api('GET', `/instances?region_id=${HZ}`);
  hz = instances.filter((i) => i.agent.online).map((i) => i.instance_id).sort();
  assert.equal(hz.length, 2, `the demo's two online instances in ${HZ}`);
});

test('RunCommand, DescribeInvocationResults in Base64 and PlainText', async () => {
  const invokeId = await run(sdk, hz, 'echo hello {{who}} from {{fleetrun::instance_id}} ✓', {
    enableParameter: true,
    parameters: { who: 'node' },
  });
  const rows = await waitFinished(sdk, invokeId, 2);
  const plain = await results(sdk, invokeId, { contentEncoding: 'PlainText' });

  assert.match(invokeId, /^t-/);
  assert.deepEqual(sortedIds(rows), hz);
  for (const row of rows) {
    assert.equal(row.invokeId, invokeId);
    assert.equal(row.invocationStatus, 'Success');
    assert.equal(row.exitCode, 0);
    assert.equal(unb64(row.output), `hello node from ${row.instanceId} ✓\n`);
  }
  for (const row of plain) assert.equal(row.output, `hello node from ${row.instanceId} ✓\n`);
  const record = await api('GET', `/invocations/${invokeId}`);
  assert.equal(record.creator, username);
});

test('DescribeInvocationResults pages by MaxResults/NextToken and filters by instance', async () => {
  const invokeId = await run(sdk, hz, 'echo rows');
  await waitFinished(sdk, invokeId, 2);

  const walk = await pagesByToken(1, async (nextToken) => {
    const r = await sdk.describeInvocationResults(
      new ecs.DescribeInvocationResultsRequest({ regionId: HZ, invokeId, maxResults: 1, nextToken }),
    );
    const { invocationResults, nextToken: next, totalCount } = r.body.invocation;
    assert.equal(totalCount, 2);
    return { items: invocationResults.invocationResult, nextToken: next };
  });
  const oneInstance = await results(sdk, invokeId, { instanceId: hz[1] });

  assert.equal(walk.pages, 2);
  assert.deepEqual(sortedIds(walk.items), hz);
  for (const row of walk.items) assert.equal(unb64(row.output), 'rows\n');
  assert.deepEqual(sortedIds(oneInstance), [hz[1]]);
});

test('DescribeInvocations shows a run, its instances and their output', async () => {
  const content = 'echo invocations ✓';
  const name = unique('node-run');
  const invokeId = await run(sdk, hz, content, { name });
  await waitFinished(sdk, invokeId, 2);

  const describe = async (extra) => (await sdk.describeInvocations(
    new ecs.DescribeInvocationsRequest({ regionId: HZ, invokeId, ...extra }),
  )).body;
  const plain = await describe({ includeOutput: true, contentEncoding: 'PlainText' });
  const base64 = await describe({ includeOutput: true });

  assert.equal(plain.totalCount, 1);
  const invocation = plain.invocations.invocation[0];
  assert.equal(invocation.invokeId, invokeId);
  assert.equal(invocation.commandType, 'RunShellScript');
  assert.equal(invocation.commandContent, content);
  assert.equal(invocation.invocationStatus, 'Success');
  assert.equal(invocation.invokeStatus, 'Finished');
  assert.equal(invocation.timeout, 60);
  assert.ok(invocation.creationTime);
  const instances = invocation.invokeInstances.invokeInstance;
  assert.deepEqual(sortedIds(instances), hz);
  for (const row of instances) {
    assert.equal(row.invocationStatus, 'Success');
    assert.equal(row.exitCode, 0);
    assert.equal(row.output, 'invocations ✓\n');
    assert.ok(row.finishTime);
  }
  const encoded = base64.invocations.invocation[0];
  assert.equal(unb64(encoded.commandContent), content);
  assert.deepEqual(encoded.invokeInstances.invokeInstance.map((i) => unb64(i.output)), ['invocations ✓\n', 'invocations ✓\n']);
});

test('StopInvocation terminates a running command', async () => {
  const invokeId = await run(sdk, [hz[0]], 'sleep 600', { timeout: 900 });
  await eventually(async () => (await results(sdk, invokeId))[0]?.invocationStatus === 'Running', 'Running');

  const stopped = await sdk.stopInvocation(new ecs.StopInvocationRequest({ regionId: HZ, invokeId }));
  const rows = await waitFinished(sdk, invokeId, 1);

  assert.ok(stopped.body.requestId);
  assert.equal(rows[0].invocationStatus, 'Terminated');
  const invocations = await sdk.describeInvocations(new ecs.DescribeInvocationsRequest({ regionId: HZ, invokeId }));
  assert.equal(invocations.body.invocations.invocation[0].invocationStatus, 'Stopped');
});

test('CreateCommand, DescribeCommands, ModifyCommand, DeleteCommand', async () => {
  const name = unique('node');
  const content = 'echo {{greeting}} node ✓';
  const commandId = await createCommand(sdk, {
    name,
    commandContent: b64(content),
    description: 'made by the Node SDK',
    enableParameter: true,
    timeout: 120,
    workingDir: '/tmp',
  });

  const asBase64 = await describeCommand(sdk, commandId);
  const asPlain = await describeCommand(sdk, commandId, { contentEncoding: 'PlainText' });
  await sdk.modifyCommand(new ecs.ModifyCommandRequest({
    regionId: HZ, commandId, name: `${name}-2`, description: 'changed', timeout: 30, commandContent: b64('echo modified'),
  }));
  const modified = await describeCommand(sdk, commandId, { contentEncoding: 'PlainText' });
  await deleteCommand(sdk, commandId);
  const after = await sdk.describeCommands(new ecs.DescribeCommandsRequest({ regionId: HZ, commandId }));

  assert.match(commandId, /^c-/);
  assert.equal(asBase64.name, name);
  assert.equal(unb64(asBase64.commandContent), content);
  assert.equal(asPlain.commandContent, content);
  assert.equal(asPlain.type, 'RunShellScript');
  assert.equal(asPlain.description, 'made by the Node SDK');
  assert.equal(asPlain.timeout, 120);
  assert.equal(asPlain.workingDir, '/tmp');
  assert.equal(asPlain.enableParameter, true);
  assert.deepEqual(asPlain.parameterNames.parameterName, ['greeting']);
  assert.equal(asPlain.invokeTimes, 0);
  assert.ok(asPlain.creationTime);
  assert.deepEqual(
    [modified.name, modified.description, modified.timeout, modified.commandContent],
    [`${name}-2`, 'changed', 30, 'echo modified'],
  );
  assert.equal(after.body.totalCount, 0);
  assert.deepEqual(after.body.commands.command, []);
});

test('DescribeCommands pages by MaxResults/NextToken', async () => {
  const prefix = unique('node-paged');
  const made = [];
  for (let n = 0; n < 3; n++) made.push(await createCommand(sdk, { name: `${prefix}-${n}`, commandContent: b64('true') }));

  const walk = await pagesByToken(2, async (nextToken) => {
    const r = await sdk.describeCommands(
      new ecs.DescribeCommandsRequest({ regionId: HZ, name: `${prefix}-*`, maxResults: 2, nextToken }),
    );
    assert.equal(r.body.totalCount, 3);
    return { items: r.body.commands.command, nextToken: r.body.nextToken };
  });
  for (const commandId of made) await deleteCommand(sdk, commandId);

  assert.equal(walk.pages, 2);
  assert.deepEqual(walk.items.map((c) => c.commandId).sort(), [...made].sort());
  assert.deepEqual(walk.items.map((c) => c.name).sort(), [0, 1, 2].map((n) => `${prefix}-${n}`));
});

test('InvokeCommand runs a retained command with parameters; DescribeInvocations pages its runs', async () => {
  const commandId = await createCommand(sdk, {
    name: unique('node-invoke'),
    commandContent: b64('echo {{greeting}} from {{fleetrun::instance_id}}'),
    enableParameter: true,
  });
  const invoke = async (instanceId, greeting) => (await sdk.invokeCommand(new ecs.InvokeCommandRequest({
    regionId: HZ, commandId, instanceId, parameters: { greeting }, timeout: 60,
  }))).body.invokeId;

  const first = await invoke(hz, 'hi there');
  const rows = await waitFinished(sdk, first, 2, { contentEncoding: 'PlainText' });
  const more = [await invoke([hz[0]], 'again'), await invoke([hz[1]], 'and again')];
  for (const invokeId of more) await waitFinished(sdk, invokeId, 1);
  const walk = await pagesByToken(2, async (nextToken) => {
    const r = await sdk.describeInvocations(
      new ecs.DescribeInvocationsRequest({ regionId: HZ, commandId, maxResults: 2, nextToken }),
    );
    return { items: r.body.invocations.invocation, nextToken: r.body.nextToken };
  });
  const command = await describeCommand(sdk, commandId);
  await deleteCommand(sdk, commandId);

  assert.match(first, /^t-/);
  assert.deepEqual(sortedIds(rows), hz);
  for (const row of rows) {
    assert.equal(row.invocationStatus, 'Success');
    assert.equal(row.commandId, commandId);
    assert.equal(row.output, `hi there from ${row.instanceId}\n`);
  }
  assert.equal(walk.pages, 2);
  assert.deepEqual(walk.items.map((i) => i.invokeId).sort(), [first, ...more].sort());
  for (const invocation of walk.items) {
    assert.equal(invocation.commandId, commandId);
    assert.equal(invocation.invocationStatus, 'Success');
  }
  assert.equal(command.invokeTimes, 3);
});

test('DescribeInstances lists the region, filters by a JSON array of ids and pages', async () => {
  const all = await sdk.describeInstances(new ecs.DescribeInstancesRequest({ regionId: HZ }));
  const one = await sdk.describeInstances(
    new ecs.DescribeInstancesRequest({ regionId: HZ, instanceIds: JSON.stringify([hz[1]]) }),
  );
  const walk = await pagesByToken(1, async (nextToken) => {
    const r = await sdk.describeInstances(new ecs.DescribeInstancesRequest({ regionId: HZ, maxResults: 1, nextToken }));
    return { items: r.body.instances.instance, nextToken: r.body.nextToken };
  });
  const second = await sdk.describeInstances(new ecs.DescribeInstancesRequest({ regionId: HZ, pageNumber: 2, pageSize: 1 }));

  assert.deepEqual(sortedIds(all.body.instances.instance), hz);
  assert.equal(all.body.totalCount, 2);
  for (const instance of all.body.instances.instance) {
    assert.equal(instance.status, 'Running');
    assert.equal(instance.regionId, HZ);
    assert.ok(instance.instanceName);
    assert.ok(instance.hostName);
    assert.ok(instance.creationTime);
  }
  assert.deepEqual(one.body.instances.instance.map((i) => i.instanceId), [hz[1]]);
  assert.equal(one.body.totalCount, 1);
  assert.equal(walk.pages, 2);
  assert.deepEqual(sortedIds(walk.items), hz);
  assert.deepEqual([second.body.pageNumber, second.body.pageSize, second.body.totalCount], [2, 1, 2]);
  assert.equal(second.body.instances.instance.length, 1);
});

test('DescribeCloudAssistantStatus shows the agents connected, and pages', async () => {
  const r = await sdk.describeCloudAssistantStatus(
    new ecs.DescribeCloudAssistantStatusRequest({ regionId: HZ, instanceId: hz }),
  );
  const walk = await pagesByToken(1, async (nextToken) => {
    const page = await sdk.describeCloudAssistantStatus(
      new ecs.DescribeCloudAssistantStatusRequest({ regionId: HZ, maxResults: 1, nextToken }),
    );
    return { items: page.body.instanceCloudAssistantStatusSet.instanceCloudAssistantStatus, nextToken: page.body.nextToken };
  });

  const rows = r.body.instanceCloudAssistantStatusSet.instanceCloudAssistantStatus;
  assert.equal(r.body.totalCount, 2);
  assert.deepEqual(sortedIds(rows), hz);
  for (const row of rows) {
    assert.equal(row.cloudAssistantStatus, 'true');
    assert.ok(row.cloudAssistantVersion);
    assert.ok(row.lastHeartbeatTime);
    assert.equal(row.OSType.toLowerCase(), 'linux');
  }
  assert.equal(walk.pages, 2);
  assert.deepEqual(sortedIds(walk.items), hz);
});

test('DescribeRegions lists the fleet\'s regions at this endpoint', async () => {
  const r = await sdk.describeRegions(new ecs.DescribeRegionsRequest({}));

  const regions = new Map(r.body.regions.region.map((region) => [region.regionId, region]));
  assert.ok(regions.has(HZ) && regions.has(EU), JSON.stringify(r.body));
  for (const region of regions.values()) {
    assert.equal(region.status, 'available');
    assert.equal(region.regionEndpoint, endpoint);
    assert.ok(region.localName);
  }
  assert.ok(r.body.requestId);
});

test('an activation enrols throwaway instances, which are described and deregistered', async () => {
  // A region of its own: what the Describe actions list there is exactly what this test made.
  const regionId = unique('ecs-node');
  const created = await admin.createActivation(new ecs.CreateActivationRequest({
    regionId, instanceCount: 2, timeToLiveInHours: 1, description: 'Node SDK test',
  }));
  const { activationId, activationCode } = created.body;
  const fresh = await describeActivations(admin, regionId, { activationId });
  const hostnames = [unique('throwaway'), unique('throwaway')].sort();
  const enrolled = [];
  for (const hostname of hostnames) {
    const registered = await register(activationId, activationCode, hostname);
    assert.equal(registered.status, 201, await registered.clone().text());
    enrolled.push((await registered.json()).instance_id);
  }
  enrolled.sort();

  const used = (await describeActivations(admin, regionId, { activationId })).activationList[0];
  const managed = await describeManaged(admin, regionId, { instanceId: enrolled });
  const walk = await pagesByToken(1, async (nextToken) => {
    const page = await describeManaged(sdk, regionId, { maxResults: 1, nextToken });
    return { items: page.instances, nextToken: page.nextToken };
  });
  const status = await sdk.describeCloudAssistantStatus(
    new ecs.DescribeCloudAssistantStatusRequest({ regionId, instanceId: enrolled }),
  );
  const disabled = await admin.disableActivation(new ecs.DisableActivationRequest({ regionId, activationId }));
  const refused = await register(activationId, activationCode, unique('throwaway'));
  const deregistered = [];
  for (const instanceId of enrolled) {
    const r = await admin.deregisterManagedInstance(new ecs.DeregisterManagedInstanceRequest({ regionId, instanceId }));
    deregistered.push(r.body.instance.instanceId);
  }
  const after = await describeManaged(admin, regionId);
  const deleted = await admin.deleteActivation(new ecs.DeleteActivationRequest({ regionId, activationId }));
  const gone = await describeActivations(admin, regionId);

  assert.ok(activationId && activationCode);
  assert.equal(fresh.totalCount, 1);
  const activation = fresh.activationList[0];
  assert.equal(activation.activationId, activationId);
  assert.equal(activation.instanceCount, 2);
  assert.equal(activation.registeredCount, 0);
  assert.equal(activation.timeToLiveInHours, 1);
  assert.equal(activation.description, 'Node SDK test');
  assert.equal(activation.disabled, false);
  assert.ok(activation.creationTime);
  assert.equal(used.registeredCount, 2);

  assert.equal(managed.totalCount, 2);
  assert.deepEqual(sortedIds(managed.instances), enrolled);
  assert.deepEqual(managed.instances.map((i) => i.hostname).sort(), hostnames);
  for (const instance of managed.instances) {
    assert.equal(instance.activationId, activationId);
    assert.equal(instance.osType.toLowerCase(), 'linux');
    assert.equal(instance.agentVersion, '0.0.0-node');
    assert.equal(instance.connected, false);
    assert.ok(instance.registrationTime);
  }
  assert.equal(walk.pages, 2);
  assert.deepEqual(sortedIds(walk.items), enrolled);
  const statuses = status.body.instanceCloudAssistantStatusSet.instanceCloudAssistantStatus;
  assert.deepEqual(sortedIds(statuses), enrolled);
  for (const row of statuses) assert.equal(row.cloudAssistantStatus, 'false');

  assert.equal(disabled.body.activation.activationId, activationId);
  assert.equal(disabled.body.activation.disabled, true);
  assert.ok(refused.status >= 400 && refused.status < 500, `${refused.status} ${await refused.text()}`);
  assert.deepEqual(deregistered, enrolled);
  assert.equal(after.totalCount, 0);
  assert.deepEqual(after.instances, []);
  assert.equal(deleted.body.activation.activationId, activationId);
  assert.equal(deleted.body.activation.registeredCount, 2);
  assert.equal(gone.totalCount, 0);
  assert.deepEqual(gone.activationList, []);
});

test('DescribeActivations pages by MaxResults/NextToken; DeleteActivation removes them', async () => {
  const regionId = unique('ecs-node');
  const made = [];
  for (let n = 0; n < 3; n++) {
    const r = await admin.createActivation(new ecs.CreateActivationRequest({ regionId, instanceCount: 1, timeToLiveInHours: 1 }));
    made.push(r.body.activationId);
  }

  const walk = await pagesByToken(2, async (nextToken) => {
    const page = await describeActivations(admin, regionId, { maxResults: 2, nextToken });
    assert.equal(page.totalCount, 3);
    return { items: page.activationList, nextToken: page.nextToken };
  });
  for (const activationId of made) {
    await admin.deleteActivation(new ecs.DeleteActivationRequest({ regionId, activationId }));
  }
  const after = await describeActivations(admin, regionId);

  assert.equal(walk.pages, 2);
  assert.deepEqual(walk.items.map((a) => a.activationId).sort(), [...made].sort());
  assert.equal(after.totalCount, 0);
});

test('errors arrive as the SDK error with code and status', async () => {
  const before = await invocationCount();
  const unknown = await refusal(() => run(sdk, ['i-doesnotexist'], 'echo never'));
  const wrongSecret = await refusal(() => client(keyId, 'not-the-secret')
    .describeRegions(new ecs.DescribeRegionsRequest({})));

  assert.equal(unknown.code, 'InvalidInstance.NotFound');
  assert.equal(unknown.statusCode, 404);
  assert.ok(unknown.data.RequestId);
  assert.equal(wrongSecret.code, 'SignatureDoesNotMatch');
  assert.equal(wrongSecret.statusCode, 400);
  assert.equal(await invocationCount(), before);
});

test('a viewer\'s key may describe but not run; an operator\'s may not create activations', async () => {
  const before = await invocationCount();
  const described = await viewer.describeInstances(new ecs.DescribeInstancesRequest({ regionId: HZ }));
  const ran = await refusal(() => run(viewer, hz, 'echo never'));
  const activation = await refusal(() => sdk.createActivation(
    new ecs.CreateActivationRequest({ regionId: EU, instanceCount: 1 }),
  ));

  assert.deepEqual(sortedIds(described.body.instances.instance), hz);
  assert.equal(ran.code, 'Forbidden.RAM');
  assert.equal(ran.statusCode, 403);
  assert.ok(ran.data.RequestId);
  assert.ok(ran.data.Message);
  assert.equal(activation.code, 'Forbidden.RAM');
  assert.equal(activation.statusCode, 403);
  assert.equal(await invocationCount(), before, 'a refused RunCommand stored an invocation');
});
