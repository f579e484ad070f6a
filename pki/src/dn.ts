/**
 * Distinguished names: building the few Custody issues, and printing any of them on one line.
 * Printing escapes RFC 4514 specials and every control character, so a hostile subject cannot
 * break the one-line output of `pki verify` or forge a log line.
 */
import { AsnConvert } from "@peculiar/asn1-schema";
import { AttributeTypeAndValue, AttributeValue, Name, RelativeDistinguishedName } from "@peculiar/asn1-x509";
import { normalizeDistinguishedName } from "../../crds/src/distinguished-name.js";

const SHORT_NAMES: Readonly<Record<string, string>> = {
  "2.5.4.3": "CN",
  "2.5.4.5": "serialNumber",
  "2.5.4.6": "C",
  "2.5.4.7": "L",
  "2.5.4.8": "ST",
  "2.5.4.10": "O",
  "2.5.4.11": "OU",
  "0.9.2342.19200300.100.1.1": "UID",
  "0.9.2342.19200300.100.1.25": "DC",
  "1.2.840.113549.1.9.1": "emailAddress",
};

export const OID_COMMON_NAME = "2.5.4.3";
export const OID_ORGANIZATION = "2.5.4.10";

/** A name of UTF8String attributes, in the order given (most significant first, e.g. O then CN). */
export function buildName(attributes: readonly { readonly type: string; readonly value: string }[]): Name {
  return new Name(
    attributes.map(
      ({ type, value }) =>
        new RelativeDistinguishedName([
          new AttributeTypeAndValue({ type, value: new AttributeValue({ utf8String: value }) }),
        ]),
    ),
  );
}

export function nameToDer(name: Name): Uint8Array {
  return new Uint8Array(AsnConvert.serialize(name));
}

export function nameFromDer(der: Uint8Array): Name {
  return AsnConvert.parse(der, Name);
}

/** `C=US, O=Acme, CN=client`: DER order, as `openssl x509 -subject` prints it. */
export function formatName(name: Name): string {
  return name
    .map((rdn) =>
      rdn
        .map(
          (attribute) => `${SHORT_NAMES[attribute.type] ?? attribute.type}=${formatValue(attribute.value)}`,
        )
        .join("+"),
    )
    .join(", ");
}

/**
 * The subject of a certificate in RFC 4514 order (most specific first) and in the one normalized
 * spelling that `ServiceIdentity.spec.externalSubjects` entries are compared in.
 */
export function normalizedDistinguishedName(der: Uint8Array): string {
  const rfc4514 = [...nameFromDer(der)]
    .reverse()
    .map((rdn) =>
      rdn
        .map(
          (attribute) => `${SHORT_NAMES[attribute.type] ?? attribute.type}=${formatValue(attribute.value)}`,
        )
        .join("+"),
    )
    .join(",");
  return normalizeDistinguishedName(rfc4514);
}

function formatValue(value: AttributeValue): string {
  if (value.anyValue !== undefined) return `#${Buffer.from(value.anyValue).toString("hex")}`;
  return escapeValue(value.toString());
}

function escapeValue(text: string): string {
  const chars = [...text];
  return chars
    .map((char, index) => {
      if (isInvisible(char.codePointAt(0) ?? 0)) return hexEscape(char);
      const edge =
        (index === 0 && (char === "#" || char === " ")) || (index === chars.length - 1 && char === " ");
      return edge || ',+"\\<>;='.includes(char) ? `\\${char}` : char;
    })
    .join("");
}

/** Text from a certificate (a URI, say) with invisible characters escaped as in names, for one-line output. */
export function printable(text: string): string {
  return [...text].map((char) => (isInvisible(char.codePointAt(0) ?? 0) ? hexEscape(char) : char)).join("");
}

/** `\xx` for each UTF-8 byte, the RFC 4514 escape. */
function hexEscape(char: string): string {
  return [...Buffer.from(char, "utf8")].map((byte) => `\\${byte.toString(16).padStart(2, "0")}`).join("");
}

/** C0/C1 controls and bidirectional overrides, which could reorder or hide what a terminal shows. */
function isInvisible(code: number): boolean {
  return (
    code < 0x20 ||
    (code >= 0x7f && code <= 0x9f) ||
    (code >= 0x202a && code <= 0x202e) ||
    (code >= 0x2066 && code <= 0x2069)
  );
}
