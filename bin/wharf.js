#!/usr/bin/env node
// The wharf command. Sources are TypeScript; tsx compiles them on load so that a
// clone runs without a build step (the container image runs the same way).
import { register } from 'tsx/esm/api';

register();
await import('../server/main.ts');
