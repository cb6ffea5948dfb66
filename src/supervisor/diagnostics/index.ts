export { CATALOGUE_DATA } from "./catalogue.js";
export { BootMatcher, CATALOGUE, PLACEHOLDERS, compileCatalogue, diagnose, holds, type Change, type CompiledCatalogue } from "./match.js";
export { DiagnosisRecord, readDiagnosis, readDiagnosisRecord, writeDiagnosisRecord } from "./store.js";
export { Catalogue, Diagnosis, factsOf, type VmFacts } from "./types.js";
export { BootDiagnostics, DEFAULT_STALL_SECONDS, stallSecondsFromEnv, type DiagnosticsHost } from "./watch.js";
