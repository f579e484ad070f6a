/**
 * The one piece of DER Custody reads by hand: whether a buffer is exactly one SEQUENCE. The ASN.1
 * parser ignores trailing bytes, and a certificate or CSR with data appended is not one we accept.
 */

const SEQUENCE = 0x30;

export function isSingleDerSequence(bytes: Uint8Array): boolean {
  if (bytes.length < 2 || bytes[0] !== SEQUENCE) return false;
  const first = bytes[1] ?? 0;
  if (first < 0x80) return 2 + first === bytes.length;
  const octets = first & 0x7f;
  // DER forbids the indefinite form (0x80) and lengths that fit in fewer octets; 4 octets is 4 GiB.
  if (octets === 0 || octets > 4 || bytes.length < 2 + octets) return false;
  let length = 0;
  for (let index = 0; index < octets; index += 1) {
    length = length * 256 + (bytes[2 + index] ?? 0);
  }
  if (length < 0x80 || (bytes[2] ?? 0) === 0) return false;
  return 2 + octets + length === bytes.length;
}
