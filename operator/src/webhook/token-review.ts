/**
 * Identity delivery's two questions to the API server — whose is this token (TokenReview, for
 * Custody's audience only), and what does that pod look like now — each with a deadline. RBAC:
 * create on tokenreviews, get on pods; nothing else.
 */
import { AuthenticationV1Api, CoreV1Api, type KubeConfig } from "@kubernetes/client-node";
import { IDENTITY_TOKEN_AUDIENCE } from "../../../crds/src/identity-delivery.js";
import { callApi, statusOf } from "../store/kubernetes-api.js";
import type { PodReader, ReviewedToken, TokenReviewer } from "./identity-delivery.js";
import { reviewedTokenOf } from "./identity-delivery.js";

const REQUEST_TIMEOUT_MS = 10_000;

export function kubernetesTokenReviewer(kubeConfig: KubeConfig): TokenReviewer {
  const api = kubeConfig.makeApiClient(AuthenticationV1Api);
  return {
    async review(token: string): Promise<ReviewedToken | undefined> {
      const review = await callApi(REQUEST_TIMEOUT_MS, undefined, (options) =>
        api.createTokenReview(
          {
            body: {
              apiVersion: "authentication.k8s.io/v1",
              kind: "TokenReview",
              spec: { token, audiences: [IDENTITY_TOKEN_AUDIENCE] },
            },
          },
          options,
        ),
      );
      const status = review.status;
      // The API server answers with the audiences the token was found valid for: ours, or nothing.
      if (status?.authenticated !== true || !(status.audiences ?? []).includes(IDENTITY_TOKEN_AUDIENCE)) {
        return undefined;
      }
      return reviewedTokenOf(status.user ?? {});
    },
  };
}

export function kubernetesPodReader(kubeConfig: KubeConfig): PodReader {
  const api = kubeConfig.makeApiClient(CoreV1Api);
  return {
    async pod(namespace: string, name: string): Promise<unknown> {
      try {
        return await callApi(REQUEST_TIMEOUT_MS, undefined, (options) =>
          api.readNamespacedPod({ name, namespace }, options),
        );
      } catch (error) {
        if (statusOf(error) === 404) return undefined;
        throw error;
      }
    },
  };
}
