import { zodToJsonSchema } from "zod-to-json-schema";
import type { z } from "zod";
import { routes, type RouteDef } from "./contract.js";

/**
 * The OpenAPI 3.1 document of the contract, generated from its zod schemas with
 * zod-to-json-schema (the schemas are zod 3 schemas, the project's `zod` import; zod 3.25's
 * `z.toJSONSchema` only takes zod/v4 schemas, so it cannot convert them). OpenAPI 3.1's schema
 * dialect is JSON Schema 2020-12, which the "openApi3" target of zod-to-json-schema fits.
 */
export function openApiDocument(version = "1"): Record<string, unknown> {
  const paths: Record<string, Record<string, unknown>> = {};
  const schema = (s: z.ZodTypeAny, io: "input" | "output" = "output") =>
    zodToJsonSchema(s, { target: "openApi3", $refStrategy: "none", pipeStrategy: io }) as Record<string, unknown>;
  for (const [id, r0] of Object.entries(routes)) {
    const r = r0 as RouteDef;
    const oaPath = r.path.replace(/:([A-Za-z]+)/g, "{$1}");
    const parameters: unknown[] = [];
    for (const [name, s] of Object.entries(r.params.shape as Record<string, z.ZodTypeAny>)) {
      parameters.push({ name, in: "path", required: true, schema: schema(s, "input"), description: s.description });
    }
    for (const [name, s] of Object.entries(r.query.shape as Record<string, z.ZodTypeAny>)) {
      parameters.push({ name, in: "query", required: !s.isOptional(), schema: schema(s, "input") });
    }
    const op: Record<string, unknown> = {
      operationId: id,
      summary: r.summary,
      tags: [id.split(".")[0]],
      parameters,
      "x-vmhost-role": r.role,
      "x-vmhost-kind": r.kind,
      ...(r.localOnly ? { "x-vmhost-local-only": true } : {}),
      security: r.role === "public" ? [] : [{ clientCertificate: [] }, { apiToken: [] }, { session: [] }],
    };
    if (Object.keys(r.body.shape).length > 0) {
      op["requestBody"] = { required: true, content: { "application/json": { schema: schema(r.body, "input") } } };
    }
    if (r.kind === "upload") op["requestBody"] = { required: true, content: { "application/octet-stream": { schema: { type: "string", format: "binary" } } } };
    const errors = { description: "An error: { error: { code, message, rule? } }", content: { "application/json": { schema: { $ref: "#/components/schemas/Error" } } } };
    if (r.kind === "stream") {
      op["responses"] = { "200": { description: "NDJSON: one JSON object a line", content: { "application/x-ndjson": { schema: schema(r.line) } } }, default: errors };
    } else if (r.kind === "websocket") {
      op["responses"] = { "101": { description: "Switching Protocols: binary WebSocket frames carry the console's bytes both ways" }, default: errors };
    } else {
      op["responses"] = { "200": { description: "OK", content: { "application/json": { schema: schema(r.reply) } } }, default: errors };
    }
    (paths[oaPath] ??= {})[r.method.toLowerCase()] = op;
  }
  return {
    openapi: "3.1.0",
    info: {
      title: "vmhost API",
      version,
      description:
        "vmhostd's management API. Over the unix socket every caller is an administrator (access is the socket's group, vmhost). " +
        "Over HTTPS (TLS 1.3) a caller presents a trusted client certificate, an API token (Authorization: Bearer), or a browser session cookie " +
        "(changes then need the X-CSRF-Token header). Each operation's x-vmhost-role is the least role it needs.",
    },
    paths,
    components: {
      schemas: {
        Error: {
          type: "object",
          required: ["error"],
          properties: {
            error: {
              type: "object",
              required: ["code", "message"],
              properties: { code: { type: "string" }, message: { type: "string" }, rule: { type: "string" } },
            },
          },
        },
      },
      securitySchemes: {
        clientCertificate: { type: "mutualTLS", description: "A client certificate added to the trust store with a one-time trust token" },
        apiToken: { type: "http", scheme: "bearer", description: "A named API token (vmhost token add NAME --role ROLE)" },
        session: { type: "apiKey", in: "cookie", name: "vmhost_session" },
      },
    },
  };
}
