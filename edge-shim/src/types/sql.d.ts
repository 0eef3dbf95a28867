// `.sql` files are Text modules (wrangler.jsonc `rules`): the import is the file's text.
declare module "*.sql" {
  const text: string;
  export default text;
}
