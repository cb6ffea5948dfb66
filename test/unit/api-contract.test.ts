import assert from "node:assert/strict";
import { test } from "node:test";
import { buildPath, routeIds, routes, type RouteDef } from "../../src/api/contract.js";
import { openApiDocument } from "../../src/api/openapi.js";
import { roleAllows } from "../../src/api/roles.js";
import { handlers } from "../../src/service/server/handlers.js";

const defs = routeIds.map((id) => [id, routes[id] as RouteDef] as const);

test("every route is defined once: method and path are unique, ids are group.method", () => {
  const seen = new Set<string>();
  for (const [id, r] of defs) {
    assert.match(id, /^[a-z]+\.[A-Za-z]+$/);
    const key = `${r.method} ${r.path.replace(/:[A-Za-z]+/g, ":")}`;
    assert.ok(!seen.has(key), `${id}: ${key} is defined twice`);
    seen.add(key);
    assert.ok(r.summary.length > 5, `${id} has a summary`);
  }
});

test("path parameters, query and body keys: each :param has a schema, no key is in two places", () => {
  for (const [id, r] of defs) {
    const inPath = [...r.path.matchAll(/:([A-Za-z]+)/g)].map((m) => m[1]!).sort();
    assert.deepEqual(Object.keys(r.params.shape).sort(), inPath, `${id}: params schema and path`);
    const keys = [...Object.keys(r.params.shape), ...Object.keys(r.query.shape), ...Object.keys(r.body.shape)];
    assert.equal(new Set(keys).size, keys.length, `${id}: a key is in two of params, query, body (${keys.join(", ")})`);
    if (r.kind === "websocket") assert.equal(r.method, "GET", `${id}: a WebSocket is a GET upgrade`);
    if (r.kind === "upload") assert.equal(Object.keys(r.body.shape).length, 0, `${id}: an upload's body is the bytes`);
    if (r.localOnly || r.hostPaths) assert.notEqual(r.role, "reader", `${id} takes host paths`);
  }
});

test("changes need more than reader, except ending one's own session; every route has its handler", () => {
  for (const [id, r] of defs) {
    if (r.change && r.role !== "public" && id !== "session.logout" && r.kind !== "websocket") assert.ok(!roleAllows("reader", r.role), `${id} is a change a reader may make`);
    assert.equal(typeof handlers[id], "function", `${id} has no handler`);
  }
  assert.ok(roleAllows("administrator", "operator") && roleAllows("operator", "reader") && !roleAllows("operator", "administrator"));
});

test("buildPath encodes names with spaces, slashes and any Unicode", () => {
  assert.equal(buildPath("/v1/vms/:vm/start", { vm: "web 1/日本" }), "/v1/vms/web%201%2F%E6%97%A5%E6%9C%AC/start");
  assert.throws(() => buildPath("/v1/vms/:vm", {}), /missing path parameter "vm"/);
});

test("the OpenAPI document has every route, its parameters, body, reply and role", () => {
  const doc = openApiDocument() as { paths: Record<string, Record<string, Record<string, unknown>>> };
  const create = doc.paths["/v1/vms"]!["post"]!;
  assert.equal(create["operationId"], "vms.create");
  const body = (create["requestBody"] as { content: Record<string, { schema: { properties: Record<string, unknown>; required: string[] } }> }).content["application/json"]!.schema;
  assert.ok(body.properties["generation"] && body.required.includes("name"));
  const remove = doc.paths["/v1/vms/{vm}"]!["delete"]!;
  assert.deepEqual((remove["parameters"] as { name: string; in: string }[]).map((p) => `${p.in}:${p.name}`), ["path:vm", "query:deleteDisks"]);
  assert.equal(doc.paths["/v1/vms/{vm}/console/serial"]!["get"]!["x-vmhost-kind"], "websocket");
  assert.equal(doc.paths["/v1/session"]!["post"]!["x-vmhost-role"], "public");
  assert.equal(Object.values(doc.paths).reduce((n, p) => n + Object.keys(p).length, 0), routeIds.length);
});
