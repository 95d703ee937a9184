// `node --import` this file: pino-pretty cannot be found, as in a production install
// (npm ci --omit=dev, the image), whatever node_modules holds.
import { registerHooks } from 'node:module';

registerHooks({
  resolve(specifier, context, next) {
    if (specifier === 'pino-pretty' || specifier.startsWith('pino-pretty/')) {
      throw Object.assign(new Error(`Cannot find module '${specifier}'`), { code: 'MODULE_NOT_FOUND' });
    }
    return next(specifier, context);
  },
});
