/**
 * The Custody API contract: what the operator and the sidecar import (and nothing else of each
 * other). Each module is small and single-purpose; this file only re-exports them.
 */

export type {
  AccessPolicy,
  AccessPolicyInput,
  AccessPolicyRule,
  AccessPolicySpec,
  AccessPolicyStatus,
  HopMatcher,
  HttpMethod,
  OperationMatcher,
  PolicyAction,
  PolicyMode,
} from "./access-policy.js";
export {
  ACCESS_POLICY_CONDITION_TYPES,
  ACCESS_POLICY_KIND,
  accessPolicySchema,
  HOP_KINDS,
  HTTP_METHODS,
  MAX_HOPS,
  MAX_RULES,
} from "./access-policy.js";
export type {
  CompiledHop,
  CompiledOperation,
  CompiledPolicy,
  CompiledRule,
  CompileOptions,
} from "./compiled-policy.js";
export { compiledPolicySchema, compilePolicy } from "./compiled-policy.js";
export type { CrdFile } from "./crd.js";
export { generateCrdFiles, toStructuralSchema } from "./crd.js";
export type { DnAttribute, RelativeDistinguishedName } from "./distinguished-name.js";
export {
  DistinguishedNameError,
  normalizeDistinguishedName,
  parseDistinguishedName,
} from "./distinguished-name.js";
export { DurationError, formatDuration, parseDuration, tryParseDuration } from "./duration.js";
export type { ValidationIssue } from "./errors.js";
export { CustodyError, formatIssue, UsageError, ValidationError } from "./errors.js";
export { formatPath, plainWords, toValidationIssues } from "./issues.js";
export type { JwkAlgorithm, Jwks, PublicJwk } from "./jwk.js";
export { JWK_ALGORITHMS, jwkSchema, jwksSchema, PRIVATE_JWK_MEMBERS } from "./jwk.js";
export type { Manifest } from "./manifest.js";
export {
  describeManifest,
  INVALID_MANIFEST,
  INVALID_YAML,
  MAX_MANIFEST_BYTES,
  MAX_MANIFEST_DOCUMENTS,
  parseManifest,
  parseManifests,
  parseYamlDocuments,
  validateAccessPolicy,
  validateManifest,
  validateServiceIdentity,
} from "./manifest.js";
export * from "./names.js";
export type { PathMatcher } from "./path-pattern.js";
export {
  compilePathPattern,
  MAX_PATH_PATTERN_LENGTH,
  PathPatternError,
  pathPatternProblem,
} from "./path-pattern.js";
export {
  DEFAULT_REGISTRY_SHARD_BYTES,
  INVALID_REGISTRY,
  loadRegistry,
  MAX_REGISTRY_SHARD_BYTES,
  mergeRegistryShards,
  parseRegistry,
  REGISTRY_CONFIGMAP_NAME,
  RegistryError,
  registryConfigMapName,
  registryFileName,
  serializeRegistryDocument,
  splitRegistry,
  validateRegistryDocument,
} from "./registry.js";
export type {
  KeyStatus,
  Registry,
  RegistryDocument,
  RegistryService,
  RegistryServiceKey,
  TrustedIssuer,
} from "./registry-schema.js";
export { MAX_REGISTRY_SHARDS, REGISTRY_KIND, registryDocumentSchema } from "./registry-schema.js";
export { isReservedClaimName, RESERVED_CLAIM_NAMES } from "./schema-kit.js";
export type {
  KeyAlgorithm,
  ServiceIdentity,
  ServiceIdentityInput,
  ServiceIdentitySpec,
  ServiceIdentityStatus,
} from "./service-identity.js";
export {
  certificateTimings,
  KEY_ALGORITHMS,
  SERVICE_IDENTITY_CONDITION_TYPES,
  SERVICE_IDENTITY_KIND,
  serviceAccountNameOf,
  serviceIdentitySchema,
} from "./service-identity.js";
