import { test } from "node:test";
import assert from "node:assert/strict";
import { ClusterConfigError, QuorumLostError, RevisionConflictError } from "../../src/cluster/errors.js";
import { clientUrlOf, peerUrlOf } from "../../src/cluster/formation.js";
import { validateHostName, validateLockName, validateVmId } from "../../src/cluster/keys.js";
import { etcdArgv } from "../../src/cluster/member.js";
import { vmRecordSchema } from "../../src/cluster/registry.js";

const SPEC = {
  name: "host-a",
  dir: "/var/lib/vmhost/cluster/etcd",
  clientUrl: "http://10.0.0.1:2379",
  peerUrl: "http://10.0.0.1:2380",
  initialCluster: [
    { name: "host-a", peerUrl: "http://10.0.0.1:2380" },
    { name: "host-b", peerUrl: "http://10.0.0.2:2380" },
  ],
  initialClusterState: "existing" as const,
  clusterToken: "vmhost-abc",
};

function flag(argv: string[], name: string): string | undefined {
  const i = argv.indexOf(name);
  return i < 0 ? undefined : argv[i + 1];
}

test("etcd argv: one member's flags, listen = advertise, data under dir/data, v2 off, raft timing defaults", () => {
  const argv = etcdArgv(SPEC);
  assert.equal(flag(argv, "--name"), "host-a");
  assert.equal(flag(argv, "--data-dir"), "/var/lib/vmhost/cluster/etcd/data");
  assert.equal(flag(argv, "--listen-client-urls"), "http://10.0.0.1:2379");
  assert.equal(flag(argv, "--advertise-client-urls"), "http://10.0.0.1:2379");
  assert.equal(flag(argv, "--listen-peer-urls"), "http://10.0.0.1:2380");
  assert.equal(flag(argv, "--initial-advertise-peer-urls"), "http://10.0.0.1:2380");
  assert.equal(flag(argv, "--initial-cluster"), "host-a=http://10.0.0.1:2380,host-b=http://10.0.0.2:2380");
  assert.equal(flag(argv, "--initial-cluster-state"), "existing");
  assert.equal(flag(argv, "--initial-cluster-token"), "vmhost-abc");
  assert.equal(flag(argv, "--heartbeat-interval"), "100");
  assert.equal(flag(argv, "--election-timeout"), "1000");
  assert.ok(argv.includes("--enable-v2=false"));
});

test("etcd argv: bad names and URLs are refused before anything runs", () => {
  assert.throws(() => etcdArgv({ ...SPEC, name: "Host_A" }), ClusterConfigError);
  assert.throws(() => etcdArgv({ ...SPEC, clientUrl: "10.0.0.1:2379" }));
  assert.throws(() => etcdArgv({ ...SPEC, peerUrl: "https://10.0.0.1:2380/x" }));
  assert.throws(() => etcdArgv({ ...SPEC, initialCluster: [] }));
});

test("formation URLs: etcd's default ports, IPv6 in brackets", () => {
  assert.equal(clientUrlOf({ name: "a", address: "10.0.0.1", dir: "/d" }), "http://10.0.0.1:2379");
  assert.equal(peerUrlOf({ name: "a", address: "fd00::1", peerPort: 12380, dir: "/d" }), "http://[fd00::1]:12380");
});

test("names: host names are DNS labels; VM ids and lock names cannot contain '/'", () => {
  for (const ok of ["a", "host-01", "x".repeat(63)]) assert.equal(validateHostName(ok), ok);
  for (const bad of ["", "-a", "a-", "A", "a.b", "a/b", "x".repeat(64)]) assert.throws(() => validateHostName(bad), ClusterConfigError, bad);
  assert.equal(validateVmId("3f2c1d9e-0b7a-4a51-9c1e-5c0f3b2a1d00"), "3f2c1d9e-0b7a-4a51-9c1e-5c0f3b2a1d00");
  for (const bad of ["", "a/b", "../x", ".x"]) assert.throws(() => validateVmId(bad), ClusterConfigError, bad);
  assert.equal(validateLockName("vm:web"), "vm:web");
  assert.throws(() => validateLockName("vm/web"), ClusterConfigError);
});

test("registry record: owner must be a host name, memory positive, config any JSON", () => {
  const ok = { id: "v1", name: "web", owner: "a", state: "Running", needs: { memoryMiB: 512, switches: [], storage: [] }, config: { disks: [{ path: "/x" }], n: 1, t: true, z: null } };
  assert.deepEqual(vmRecordSchema.parse(ok).config, ok.config);
  assert.throws(() => vmRecordSchema.parse({ ...ok, owner: "A B" }));
  assert.throws(() => vmRecordSchema.parse({ ...ok, needs: { ...ok.needs, memoryMiB: 0 } }));
  assert.throws(() => vmRecordSchema.parse({ ...ok, state: "Starting" }));
});

test("errors: conflict and quorum messages name the revisions, the counts and what to do", () => {
  const c = new RevisionConflictError("/vmhost/vms/v1", "12", "15");
  assert.equal(c.code, "cluster-revision-conflict");
  assert.equal(c.status, 409);
  assert.match(c.message, /you read revision 12, it is now 15/);
  assert.match(new RevisionConflictError("/vmhost/vms/v1", "0", "3").message, /already exists/);
  assert.match(new RevisionConflictError("/vmhost/vms/v1", "7", undefined).message, /no longer exists/);
  const q = new QuorumLostError({ members: 3, reachable: 1, hasLeader: false }, "update clustered VM web");
  assert.equal(q.code, "cluster-no-quorum");
  assert.equal(q.status, 503);
  assert.match(q.message, /^cannot update clustered VM web: the cluster has no quorum \(1 of 3 etcd members answer, none has a leader; 2 are needed\)/);
  assert.match(q.message, /Changes are refused/);
});
