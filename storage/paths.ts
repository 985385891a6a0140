// Where everything lives in the storage driver. The layout is CNCF Distribution's, so
// that a Distribution data directory or bucket is served as it is:
//
// <root>/docker/registry/v2/
//   blobs/<alg>/<first two hex>/<hex>/data                         the bytes of every blob and manifest
//   repositories/<name>/
//     _layers/<alg>/<hex>/link                                      blob linked into the repository
//     _manifests/revisions/<alg>/<hex>/link                         manifest present in the repository
//     _manifests/tags/<tag>/current/link                            tag -> manifest digest
//     _manifests/tags/<tag>/index/<alg>/<hex>/link                  every digest the tag has pointed at
//     _uploads/<uuid>/data                                          upload in progress
//     _uploads/<uuid>/startedat                                     RFC 3339 start time, for purging
//     _referrers/<alg>/<subject hex>/<alg>/<hex>/link               wharf: manifest whose subject is <subject>
//
// Every `link` file holds the digest string (`sha256:...`, no newline). Paths here are
// driver paths: absolute, '/'-separated, relative to the driver's root. Callers must have
// validated names, tags, digests and upload ids; these functions only assemble strings.
import type { Digest } from './digest.js';

export const ROOT = '/docker/registry/v2';
export const BLOBS = `${ROOT}/blobs`;
export const REPOSITORIES = `${ROOT}/repositories`;

export const blobDir = (d: Digest) => `${BLOBS}/${d.algorithm}/${d.hex.slice(0, 2)}/${d.hex}`;
export const blobData = (d: Digest) => `${blobDir(d)}/data`;

export const repoDir = (name: string) => `${REPOSITORIES}/${name}`;
export const layerDir = (name: string, d: Digest) => `${repoDir(name)}/_layers/${d.algorithm}/${d.hex}`;
export const layerLink = (name: string, d: Digest) => `${layerDir(name, d)}/link`;
export const layersDir = (name: string) => `${repoDir(name)}/_layers`;

export const manifestsDir = (name: string) => `${repoDir(name)}/_manifests`;
export const revisionsDir = (name: string) => `${manifestsDir(name)}/revisions`;
export const revisionDir = (name: string, d: Digest) => `${revisionsDir(name)}/${d.algorithm}/${d.hex}`;
export const revisionLink = (name: string, d: Digest) => `${revisionDir(name, d)}/link`;

export const tagsDir = (name: string) => `${manifestsDir(name)}/tags`;
export const tagDir = (name: string, tag: string) => `${tagsDir(name)}/${tag}`;
export const tagCurrentLink = (name: string, tag: string) => `${tagDir(name, tag)}/current/link`;
export const tagIndexLink = (name: string, tag: string, d: Digest) =>
  `${tagDir(name, tag)}/index/${d.algorithm}/${d.hex}/link`;

export const uploadsDir = (name: string) => `${repoDir(name)}/_uploads`;
export const uploadDir = (name: string, id: string) => `${uploadsDir(name)}/${id}`;
export const uploadData = (name: string, id: string) => `${uploadDir(name, id)}/data`;
export const uploadStartedAt = (name: string, id: string) => `${uploadDir(name, id)}/startedat`;

export const referrersDir = (name: string, subject: Digest) =>
  `${repoDir(name)}/_referrers/${subject.algorithm}/${subject.hex}`;
export const referrerEntry = (name: string, subject: Digest, d: Digest) =>
  `${referrersDir(name, subject)}/${d.algorithm}/${d.hex}`;
export const referrerLink = (name: string, subject: Digest, d: Digest) => `${referrerEntry(name, subject, d)}/link`;
