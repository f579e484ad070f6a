/**
 * The chain's view of compact JWS: the shared implementation in pki/src/jws.ts, with its errors
 * turned into ChainErrors that name the element they were found in.
 */
import { JwsError, type ParsedJws, parseCompactJws as parseJws } from "../../../pki/src/jws.js";
import { ChainError } from "./errors.js";

export {
  algorithmForKey,
  JWS_ALGORITHMS as LINK_ALGORITHMS,
  type JwsAlgorithm as LinkAlgorithm,
  type ParsedJws,
  sha256Base64url,
  signCompactJws,
  verifySignature,
} from "../../../pki/src/jws.js";

export function parseCompactJws(text: string, element: number): ParsedJws {
  try {
    return parseJws(text);
  } catch (error) {
    if (error instanceof JwsError) throw new ChainError(error.code, error.message, element);
    throw error;
  }
}
