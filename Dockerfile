# wharf's container image: a normal build (needs the npm registry and Docker Hub's node image).
#   docker build -t wharf:0.1.0 .
# Without internet, scripts/build-offline-image.sh makes an equivalent image from this machine's
# node and the built app. Both run as user 65532 with the entrypoint below; the Helm chart in
# charts/wharf passes `serve /etc/wharf/config.yml` and runs them with a read-only root filesystem.

# Build: compile the TypeScript, then keep only the production dependencies.
FROM node:20-slim AS build
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY server ./server
COPY storage ./storage
COPY auth ./auth
COPY mirror ./mirror
COPY bin ./bin
RUN npm run build && npm prune --omit=dev --no-audit --no-fund

# Run: node, the compiled build, production node_modules. No sources, so bin/wharf.js runs dist/.
FROM node:20-slim
ENV NODE_ENV=production
WORKDIR /app
COPY --from=build /src/package.json ./
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
COPY --from=build /src/bin ./bin
COPY scripts/image-config.yml /etc/wharf/config.yml
RUN groupadd --system --gid 65532 wharf \
 && useradd --system --uid 65532 --gid 65532 --home-dir /var/lib/registry --shell /usr/sbin/nologin wharf \
 && mkdir -p /var/lib/registry \
 && chown 65532:65532 /var/lib/registry
USER 65532:65532
VOLUME /var/lib/registry
EXPOSE 5000 5001
# The flags of bin/wharf.js's #! line (a 4 MB young generation, gc on idle).
ENTRYPOINT ["/usr/local/bin/node", "--max-semi-space-size=4", "--expose-gc", "/app/bin/wharf.js"]
CMD ["serve", "/etc/wharf/config.yml"]
