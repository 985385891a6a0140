import { describe, expect, it } from 'vitest';
import { parseContentRange, parseRange, uploadRange } from '../../server/http-range.js';
import { loadConfig, parseDuration, parseListenAddress, ConfigError } from '../../server/config.js';

describe('Range', () => {
  it('parses single ranges against the size', () => {
    expect(parseRange(undefined, 10)).toBeUndefined();
    expect(parseRange('bytes=0-4', 10)).toEqual({ start: 0, end: 5 });
    expect(parseRange('bytes=5-', 10)).toEqual({ start: 5, end: 10 });
    expect(parseRange('bytes=-3', 10)).toEqual({ start: 7, end: 10 });
    expect(parseRange('bytes=8-100', 10)).toEqual({ start: 8, end: 10 });
    expect(parseRange('bytes=0-1,3-4', 10)).toBeUndefined();
    expect(parseRange('items=0-1', 10)).toBeUndefined();
  });
  it('refuses unsatisfiable ranges', () => {
    expect(() => parseRange('bytes=10-', 10)).toThrow(/not satisfiable/);
    expect(() => parseRange('bytes=5-2', 10)).toThrow(/not satisfiable/);
    expect(() => parseRange('bytes=-0', 10)).toThrow(/not satisfiable/);
  });
  it('parses upload Content-Range', () => {
    expect(parseContentRange('0-99')).toEqual({ start: 0, length: 100 });
    expect(parseContentRange('bytes 100-199/*')).toEqual({ start: 100, length: 100 });
    expect(parseContentRange('9-1')).toBe('invalid');
    expect(parseContentRange('abc')).toBe('invalid');
    expect(uploadRange(0)).toBe('0-0');
    expect(uploadRange(100)).toBe('0-99');
  });
});

describe('config', () => {
  it('defaults to :5000 and ./data with no file', () => {
    const c = loadConfig({ env: {} });
    expect(c.http.addr).toBe(':5000');
    expect(c.storage.filesystem?.rootdirectory).toMatch(/\/data$/);
    expect(c.storage.delete.enabled).toBe(false);
  });
  it('takes REGISTRY_* overrides by key path', () => {
    const c = loadConfig({
      env: {
        REGISTRY_HTTP_ADDR: '127.0.0.1:6000',
        REGISTRY_STORAGE_DELETE_ENABLED: 'true',
        REGISTRY_STORAGE_MAINTENANCE_UPLOADPURGING_AGE: '2h',
      },
    });
    expect(c.http.addr).toBe('127.0.0.1:6000');
    expect(c.storage.delete.enabled).toBe(true);
    expect(c.storage.maintenance.uploadpurging.age).toBe(7_200_000);
    expect(c.ignoredKeys).toEqual([]);
  });
  it('stops on a variable that names no key', () => {
    expect(() => loadConfig({ env: { REGISTRY_NOT_A_KEY: 'x' } })).toThrow(/not\.a\.key \(REGISTRY_NOT_A_KEY\): unknown configuration key/);
  });
  it('stops on a bad value, naming the key', () => {
    expect(() => loadConfig({ env: { REGISTRY_STORAGE_DELETE_ENABLED: 'maybe' } })).toThrow(/storage\.delete\.enabled/);
    expect(() => loadConfig({ env: { REGISTRY_HTTP_ADDR: 'nope' } })).toThrow(ConfigError);
    expect(() => loadConfig({ env: { REGISTRY_LOG_LEVEL: 'chatty' } })).toThrow(/log\.level/);
  });
  it('parses Go durations and listen addresses', () => {
    expect(parseDuration('1h30m')).toBe(5_400_000);
    expect(parseDuration('250ms')).toBe(250);
    expect(parseDuration('soon')).toBeUndefined();
    expect(parseListenAddress(':5000')).toEqual({ host: undefined, port: 5000 });
    expect(parseListenAddress('[::1]:80')).toEqual({ host: '::1', port: 80 });
  });
});
