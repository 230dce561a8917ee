SELECT 1; -- fixture for tests/unit/common/meson.build: a malformed migration set
