/** The API contract (routes, request and reply schemas, roles) and its OpenAPI document. */
export * from "./contract.js";
export * from "./roles.js";
export * as requests from "./requests.js";
export * as views from "./views.js";
export { openApiDocument } from "./openapi.js";
