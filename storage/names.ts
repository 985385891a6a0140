// Repository names and tags, by the grammar of the OCI distribution spec. A name that
// passes here is safe to use as a storage path: no dots-only segment, no empty segment,
// no characters outside [a-z0-9._/-].
import { RegistryError } from './errors.js';

const COMPONENT = '[a-z0-9]+(?:(?:\\.|_|__|-+)[a-z0-9]+)*';
const NAME = new RegExp(`^${COMPONENT}(?:/${COMPONENT})*$`);
const TAG = /^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$/;
/** Distribution's limit; clients also limit `host/name` to 255. */
export const MAX_NAME_LENGTH = 255;

export function isValidRepositoryName(name: string): boolean {
  return name.length > 0 && name.length <= MAX_NAME_LENGTH && NAME.test(name);
}

export function assertRepositoryName(name: string): void {
  if (!isValidRepositoryName(name)) {
    throw new RegistryError('NAME_INVALID', 'invalid repository name', { name: name.slice(0, MAX_NAME_LENGTH + 1) });
  }
}

export function isValidTag(tag: string): boolean {
  return TAG.test(tag);
}

export function assertTag(tag: string): void {
  if (!isValidTag(tag)) throw new RegistryError('TAG_INVALID', 'invalid tag', { tag: tag.slice(0, 129) });
}
