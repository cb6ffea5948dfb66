/**
 * @vmhost/sdk: a typed client of vmhostd's API. Routes, request and reply types come from the
 * API contract (src/api/contract.ts); `new VmhostClient(transport).api.vms.start({ vm: "web" })`.
 * Node transports (unix socket, HTTPS with a client certificate or token) are in "@vmhost/sdk/node";
 * the browser one (fetch + session cookie + CSRF header) is `fetchTransport` here.
 */
export { VmhostClient, parseReply, type Api, type CallOptions, type HttpRequest, type HttpResponse, type RouteMethod, type SocketLike, type Transport, type UploadData } from "./client.js";
export { ApiError } from "./errors.js";
export { fetchTransport } from "./fetch.js";
export { routes, routeIds, buildPath, type RouteId, type RouteInput, type RouteReply, type RouteLine } from "../../../src/api/contract.js";
export { roleAllows, type Role, type RouteRole } from "../../../src/api/roles.js";
export type * as views from "../../../src/api/views.js";
