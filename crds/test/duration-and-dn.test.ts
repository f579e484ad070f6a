import { describe, expect, it } from "vitest";
import {
  DistinguishedNameError,
  normalizeDistinguishedName,
  parseDistinguishedName,
} from "../src/distinguished-name.js";
import { DurationError, formatDuration, parseDuration, tryParseDuration } from "../src/duration.js";

describe("parseDuration", () => {
  it("reads Go durations into milliseconds, exactly", () => {
    expect(parseDuration("24h")).toBe(86_400_000);
    expect(parseDuration("1h30m")).toBe(5_400_000);
    expect(parseDuration("1.5h")).toBe(5_400_000);
    expect(parseDuration("0.1h")).toBe(360_000);
    expect(parseDuration("90s")).toBe(90_000);
    expect(parseDuration("250ms")).toBe(250);
    expect(parseDuration("1m1ms")).toBe(60_001);
    expect(parseDuration("0s")).toBe(0);
  });

  it("refuses everything else with a DurationError", () => {
    for (const text of ["", "24", "1d", "-1h", "1h ", "h", "1.h", "1us", "1.5ms", "1e3s", "0.0000000001h"]) {
      expect(() => parseDuration(text), text).toThrow(DurationError);
      expect(tryParseDuration(text)).toBeUndefined();
    }
    expect(() => parseDuration("1h".repeat(17))).toThrow(/at most 32 characters/);
    expect(() => parseDuration("999999999h999999999h999999999h")).toThrow(/too long/);
  });

  it("formats milliseconds back", () => {
    expect(formatDuration(5_400_000)).toBe("1h30m");
    expect(formatDuration(60_001)).toBe("1m1ms");
    expect(formatDuration(0)).toBe("0s");
    expect(() => formatDuration(-1)).toThrow(DurationError);
  });
});

describe("distinguished names", () => {
  it("normalizes spacing, type case and multi-valued RDN order", () => {
    expect(normalizeDistinguishedName("cn = partner-client , o=Partner Ltd, C=GB")).toBe(
      "CN=partner-client,O=Partner Ltd,C=GB",
    );
    expect(normalizeDistinguishedName("OU=b+CN=a,O=x")).toBe(normalizeDistinguishedName("CN=a+OU=b,O=x"));
  });

  it("keeps escapes meaningful", () => {
    const [rdn] = parseDistinguishedName("CN=Smith\\, John,O=Acme");
    expect(rdn).toEqual([{ type: "CN", value: "Smith, John", hex: false }]);
    expect(normalizeDistinguishedName("CN=Smith\\2C John")).toBe("CN=Smith\\, John");
    expect(normalizeDistinguishedName("CN=\\#1")).toBe("CN=\\#1");
    expect(normalizeDistinguishedName("CN=#0403616263")).toBe("CN=#0403616263");
    expect(normalizeDistinguishedName("CN=caf\\C3\\A9")).toBe("CN=café");
    expect(normalizeDistinguishedName("2.5.4.3=x")).toBe("2.5.4.3=x");
  });

  it("values stay case-sensitive (exact matching fails closed)", () => {
    expect(normalizeDistinguishedName("CN=Partner")).not.toBe(normalizeDistinguishedName("CN=partner"));
  });

  it("refuses what is not a DN", () => {
    for (const dn of [
      "",
      "partner",
      "CN=a,,O=b",
      "CN=",
      "CN=a,b",
      "C N=x",
      "CN=a\\zz",
      "CN=a;b",
      "CN=\\FF",
    ]) {
      expect(() => parseDistinguishedName(dn), dn).toThrow(DistinguishedNameError);
    }
    expect(() => parseDistinguishedName(`CN=${"a".repeat(1100)}`)).toThrow(/longer than 1024/);
    expect(() => parseDistinguishedName(Array.from({ length: 17 }, (_, i) => `OU=${i}`).join(","))).toThrow(
      /more than 16 RDNs/,
    );
  });
});
