// The calls an application makes through Supabase's PostgREST client
// (@supabase/postgrest-js), shared by the Node.js run (postgrest_conformance.mjs) and
// the browser run (browser_entry.mjs). `report` receives one object per step:
// {step, status, data, count, error}; tests/rest.rs compares them with the typed API.
import { PostgrestClient } from '@supabase/postgrest-js';

export async function run({ base, anonKey, userToken, userId, otherId }, report) {
  const url = `${base}/rest/v1`;
  const user = new PostgrestClient(url, {
    headers: { apikey: anonKey, Authorization: `Bearer ${userToken}` },
  });
  const anon = new PostgrestClient(url, { headers: { apikey: anonKey } });

  async function step(name, query) {
    const { data, error, count, status } = await query;
    report({
      step: name,
      status,
      data: data ?? null,
      count: count ?? null,
      error: error ? { code: error.code, message: error.message } : null,
    });
  }

  await step('select_ordered', user.from('profiles').select('username').order('username'));
  await step('select_desc_limit', user.from('profiles').select('username').order('username', { ascending: false }).limit(1));
  await step('filter_in', user.from('profiles').select('username').in('username', ['alice-a', 'nobody']));
  await step('filter_or', user.from('profiles').select('username').or('username.eq.alice-b,username.eq.bob-a').order('username'));
  await step('filter_ilike', user.from('profiles').select('username').ilike('username', 'ALICE-%').order('username'));
  await step('filter_is_null', user.from('profiles').select('username').is('avatar_url', null).order('username'));
  await step('filter_not', user.from('profiles').select('username').not('username', 'eq', 'alice-a'));
  await step('filter_neq_gt', user.from('profiles').select('username').neq('username', 'alice-a').gt('username', 'a'));
  await step('range_count', user.from('profiles').select('username', { count: 'exact' }).order('username').range(1, 1));
  await step('head_count', user.from('profiles').select('*', { count: 'exact', head: true }));
  await step('single', user.from('profiles').select('username').eq('username', 'alice-a').single());
  await step('single_none', user.from('profiles').select('username').eq('username', 'bob-a').single());
  await step('maybe_single', user.from('profiles').select('username').eq('username', 'bob-a').maybeSingle());
  await step('insert', user.from('profiles').insert({ user_id: userId, username: 'alice-js' }).select('username,status'));
  await step('insert_bulk', user.from('profiles').insert([
    { user_id: userId, username: 'alice-js-2' },
    { user_id: userId, username: 'alice-js-3' },
  ]).select('username').order('username'));
  await step('upsert', user.from('profiles').upsert(
    { user_id: userId, username: 'alice-js', avatar_url: 'https://a/js.png' },
    { onConflict: 'username' },
  ).select('username,avatar_url'));
  await step('update', user.from('profiles').update({ avatar_url: 'https://a/v2.png' }).eq('username', 'alice-js').select('username,avatar_url'));
  await step('rls_denied_insert', user.from('profiles').insert({ user_id: otherId, username: 'not-mine' }));
  await step('rls_hidden_update', user.from('profiles').update({ avatar_url: 'x' }).eq('username', 'bob-a').select('username'));
  await step('delete', user.from('profiles').delete().in('username', ['alice-js-2', 'alice-js-3']).select('username').order('username'));
  await step('anon_select', anon.from('profiles').select('username'));
  await step('unknown_table', user.from('nope').select('*'));
  await step('unknown_column', user.from('profiles').select('nope'));
  await step('embed_children', anon.from('authors').select('name, posts(title)').order('name'));
  await step('embed_parent', anon.from('posts').select('title, authors(name)').eq('id', 12).single());
  await step('after', user.from('profiles').select('username,avatar_url').order('username'));
}
