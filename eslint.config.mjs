// ESLint: typescript-eslint's type-aware recommended rules for src/ and test/, the plain JS ones for
// bench/, scripts/ and the stand-ins. Layout (indentation, quotes, line breaks) belongs to Prettier
// (.prettierrc.json, `npm run format`); eslint-config-prettier turns off every rule that would fight
// it. The one layout rule kept here is the line-length limit for what Prettier does not wrap: comments.
import js from '@eslint/js';
import stylistic from '@stylistic/eslint-plugin';
import prettier from 'eslint-config-prettier';
import globals from 'globals';
import tseslint from 'typescript-eslint';

/** Prettier's printWidth: code is wrapped to it, comments are held to it here. */
const MAX_LINE = 140;

export default tseslint.config(
  { ignores: ['dist/', 'node_modules/', '.tap/', 'test/fixtures/recordings/', 'bench/results/'] },

  js.configs.recommended,
  {
    files: ['**/*.ts'],
    extends: [tseslint.configs.recommendedTypeChecked],
    languageOptions: {
      // Each file is checked with the tsconfig.json nearest to it: src/ with the root one, test/ with test/tsconfig.json.
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      // tsc's noUnusedLocals/noUnusedParameters already fail the build on these; `_name` marks one kept on purpose.
      '@typescript-eslint/no-unused-vars': [
        'error',
        { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrors: 'none', ignoreRestSiblings: true },
      ],
      // Fire-and-forget is deliberate in places (timers, `void promise`); unhandled rejections are what matter.
      '@typescript-eslint/no-floating-promises': ['error', { ignoreVoid: true }],
      // Fastify hooks and Node event handlers take async functions by design.
      '@typescript-eslint/no-misused-promises': ['error', { checksVoidReturn: false }],
      // Off: Fastify hooks and tap tests are async by contract; `async () => clearInterval(t)` is how a sync one is written.
      '@typescript-eslint/require-await': 'off',
      // `typeof import('pino-pretty')` types a module that is loaded lazily, on purpose.
      '@typescript-eslint/consistent-type-imports': ['error', { fixStyle: 'inline-type-imports', disallowTypeAnnotations: false }],
    },
  },
  {
    // Off in tests: tap tracks every t.test / t.rejects / t.resolves it is given and waits for them.
    files: ['test/**/*.ts'],
    rules: { '@typescript-eslint/no-floating-promises': 'off' },
  },
  {
    files: ['**/*.mjs', '**/*.cjs', '**/*.js'],
    languageOptions: { globals: { ...globals.node } },
    rules: {
      'no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrors: 'none' }],
    },
  },
  { files: ['**/*.cjs'], languageOptions: { sourceType: 'commonjs' } },

  prettier,
  {
    plugins: { '@stylistic': stylistic },
    rules: {
      // After eslint-config-prettier, which turns max-len off: Prettier wraps code to MAX_LINE, this holds comments
      // to it. Strings, template literals, regular expressions and URLs are left long rather than split.
      '@stylistic/max-len': [
        'error',
        { code: MAX_LINE, ignoreStrings: true, ignoreTemplateLiterals: true, ignoreRegExpLiterals: true, ignoreUrls: true },
      ],
    },
  },
);
