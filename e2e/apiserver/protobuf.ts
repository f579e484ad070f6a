/**
 * Decoding of the Kubernetes protobuf envelope for the few built-in kinds kubectl's imperative
 * generators POST as protobuf (`kubectl create namespace|secret|configmap|serviceaccount`).
 * Other kinds get 415; kubectl sends everything else (apply, create -f, patch, delete) as JSON.
 * Responses are always JSON (kubectl accepts `application/json` as well).
 */
import { ApiError, badRequest } from "./errors.js";
import type { JsonObject, JsonValue } from "./json.js";
import { put } from "./json.js";

export const PROTOBUF = "application/vnd.kubernetes.protobuf";
const MAGIC = Buffer.from([0x6b, 0x38, 0x73, 0x00]);

type FieldKind =
  | "string"
  | "bytes"
  | "bool"
  | "int"
  | "message"
  | "map-string"
  | "map-bytes"
  | "repeated-string"
  | "repeated-message";

interface Field {
  readonly name: string;
  readonly kind: FieldKind;
  readonly message?: Schema;
}

type Schema = Readonly<Record<number, Field>>;

const OWNER_REFERENCE: Schema = {
  1: { name: "kind", kind: "string" },
  3: { name: "name", kind: "string" },
  4: { name: "uid", kind: "string" },
  5: { name: "apiVersion", kind: "string" },
  6: { name: "controller", kind: "bool" },
  7: { name: "blockOwnerDeletion", kind: "bool" },
};

const OBJECT_META: Schema = {
  1: { name: "name", kind: "string" },
  2: { name: "generateName", kind: "string" },
  3: { name: "namespace", kind: "string" },
  11: { name: "labels", kind: "map-string" },
  12: { name: "annotations", kind: "map-string" },
  13: { name: "ownerReferences", kind: "repeated-message", message: OWNER_REFERENCE },
  14: { name: "finalizers", kind: "repeated-string" },
};

const METADATA: Field = { name: "metadata", kind: "message", message: OBJECT_META };

const KINDS: Readonly<Record<string, Schema>> = {
  "v1/Namespace": {
    1: METADATA,
    2: { name: "spec", kind: "message", message: { 1: { name: "finalizers", kind: "repeated-string" } } },
  },
  "v1/Secret": {
    1: METADATA,
    2: { name: "data", kind: "map-bytes" },
    3: { name: "type", kind: "string" },
    4: { name: "stringData", kind: "map-string" },
    5: { name: "immutable", kind: "bool" },
  },
  "v1/ConfigMap": {
    1: METADATA,
    2: { name: "data", kind: "map-string" },
    3: { name: "binaryData", kind: "map-bytes" },
    4: { name: "immutable", kind: "bool" },
  },
  "v1/ServiceAccount": {
    1: METADATA,
    3: {
      name: "imagePullSecrets",
      kind: "repeated-message",
      message: { 1: { name: "name", kind: "string" } },
    },
    4: { name: "automountServiceAccountToken", kind: "bool" },
  },
};

class Reader {
  private position = 0;

  constructor(private readonly buffer: Buffer) {}

  get done(): boolean {
    return this.position >= this.buffer.length;
  }

  varint(): number {
    let result = 0;
    let multiplier = 1;
    for (let index = 0; index < 10; index += 1) {
      const byte = this.buffer[this.position];
      if (byte === undefined) throw badRequest("truncated protobuf varint");
      this.position += 1;
      result += (byte & 0x7f) * multiplier;
      if ((byte & 0x80) === 0) return result;
      multiplier *= 128;
    }
    throw badRequest("invalid protobuf varint");
  }

  bytes(): Buffer {
    const length = this.varint();
    if (this.position + length > this.buffer.length) throw badRequest("truncated protobuf field");
    const slice = this.buffer.subarray(this.position, this.position + length);
    this.position += length;
    return slice;
  }

  skip(wireType: number): void {
    if (wireType === 0) this.varint();
    else if (wireType === 1) this.position += 8;
    else if (wireType === 2) this.bytes();
    else if (wireType === 5) this.position += 4;
    else throw badRequest(`unsupported protobuf wire type ${wireType}`);
  }
}

function decodeEntry(buffer: Buffer): [string, Buffer] {
  const reader = new Reader(buffer);
  let key = "";
  let value: Buffer = Buffer.alloc(0);
  while (!reader.done) {
    const tag = reader.varint();
    if (tag === 0x0a) key = reader.bytes().toString("utf8");
    else if (tag === 0x12) value = reader.bytes();
    else reader.skip(tag & 7);
  }
  return [key, value];
}

function decodeMessage(buffer: Buffer, schema: Schema): JsonObject {
  const reader = new Reader(buffer);
  const result: JsonObject = {};
  while (!reader.done) {
    const tag = reader.varint();
    const field = schema[Math.floor(tag / 8)];
    const wireType = tag & 7;
    if (field === undefined) {
      reader.skip(wireType);
      continue;
    }
    if (field.kind === "bool" || field.kind === "int") {
      const value = reader.varint();
      put(result, field.name, field.kind === "bool" ? value !== 0 : value);
      continue;
    }
    const bytes = reader.bytes();
    switch (field.kind) {
      case "string":
        if (bytes.length > 0) put(result, field.name, bytes.toString("utf8"));
        break;
      case "bytes":
        put(result, field.name, bytes.toString("base64"));
        break;
      case "message":
        put(result, field.name, decodeMessage(bytes, field.message ?? {}));
        break;
      case "map-string":
      case "map-bytes": {
        const [key, value] = decodeEntry(bytes);
        const map = (result[field.name] as JsonObject | undefined) ?? {};
        put(map, key, field.kind === "map-string" ? value.toString("utf8") : value.toString("base64"));
        put(result, field.name, map);
        break;
      }
      case "repeated-string":
      case "repeated-message": {
        const list = (result[field.name] as JsonValue[] | undefined) ?? [];
        list.push(
          field.kind === "repeated-string"
            ? bytes.toString("utf8")
            : decodeMessage(bytes, field.message ?? {}),
        );
        put(result, field.name, list);
        break;
      }
    }
  }
  return result;
}

/** Decodes `k8s\0` + runtime.Unknown{typeMeta, raw} into the JSON form of the object. */
export function decodeProtobuf(body: Buffer): JsonObject {
  if (!body.subarray(0, 4).equals(MAGIC))
    throw badRequest("the protobuf body does not start with the Kubernetes magic number");
  const envelope = new Reader(body.subarray(4));
  let apiVersion = "";
  let kind = "";
  let raw: Buffer = Buffer.alloc(0);
  while (!envelope.done) {
    const tag = envelope.varint();
    if (tag === 0x0a) {
      const typeMeta = new Reader(envelope.bytes());
      while (!typeMeta.done) {
        const inner = typeMeta.varint();
        if (inner === 0x0a) apiVersion = typeMeta.bytes().toString("utf8");
        else if (inner === 0x12) kind = typeMeta.bytes().toString("utf8");
        else typeMeta.skip(inner & 7);
      }
    } else if (tag === 0x12) {
      raw = envelope.bytes();
    } else {
      envelope.skip(tag & 7);
    }
  }
  const schema = KINDS[`${apiVersion}/${kind}`];
  if (schema === undefined) {
    throw new ApiError(
      415,
      "UnsupportedMediaType",
      `this test API server decodes protobuf only for ${Object.keys(KINDS).join(", ")}; send ${apiVersion}/${kind} as application/json`,
    );
  }
  return { apiVersion, kind, ...decodeMessage(raw, schema) };
}
