# Build stage: dependencies are compiled in their own layer, which is reused
# until Cargo.toml, Cargo.lock, build.rs or the proto change.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src
COPY migrations ./migrations
COPY src ./src
# The placeholders above are newer than the real sources' checkout times;
# touching makes cargo rebuild the crate itself.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked

# Runtime stage: glibc and libgcc only, no shell, unprivileged user.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/batch-history /usr/local/bin/batch-history
# 65532 is distroless's "nonroot" user.
USER 65532:65532
ENV LISTEN_ADDR=0.0.0.0:50051 \
    LOG_FORMAT=json
EXPOSE 50051 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["batch-history", "healthcheck", "--addr", "127.0.0.1:50051"]
ENTRYPOINT ["batch-history"]
CMD ["serve"]
