//! The derive input read once into a small model that keeps the user's tokens for spans.

use proc_macro2::Span;
use syn::{DeriveInput, Ident, LitStr, Type, Visibility};

use super::attr::{ContainerAttrs, FieldAttrs};
use crate::internals::ctxt::Ctxt;

pub(crate) struct Container<'a> {
    pub(crate) input: &'a DeriveInput,
    pub(crate) ident: &'a Ident,
    pub(crate) vis: &'a Visibility,
    pub(crate) attrs: ContainerAttrs,
    pub(crate) fields: Vec<Field<'a>>,
}

pub(crate) struct Field<'a> {
    pub(crate) ident: &'a Ident,
    pub(crate) vis: &'a Visibility,
    pub(crate) ty: &'a Type,
    pub(crate) attrs: FieldAttrs,
}

impl<'a> Container<'a> {
    /// Reads the input; `None` when its shape is not a struct with named fields (the
    /// error is in `cx`).
    pub(crate) fn from_ast(cx: &mut Ctxt, input: &'a DeriveInput) -> Option<Self> {
        let attrs = ContainerAttrs::from_attrs(cx, &input.attrs);
        let named = match &input.data {
            syn::Data::Struct(data) => match &data.fields {
                syn::Fields::Named(named) => named,
                syn::Fields::Unnamed(_) => {
                    cx.error_spanned_by(
                        &data.fields,
                        "#[derive(Table)] needs named fields: a tuple struct has no column names",
                    );
                    return None;
                }
                syn::Fields::Unit => {
                    cx.error_spanned_by(
                        &input.ident,
                        "#[derive(Table)] needs a struct with named fields, one per column",
                    );
                    return None;
                }
            },
            syn::Data::Enum(data) => {
                cx.error_spanned_by(
                    data.enum_token,
                    "#[derive(Table)] is for structs; an enum is not a table row",
                );
                return None;
            }
            syn::Data::Union(data) => {
                cx.error_spanned_by(
                    data.union_token,
                    "#[derive(Table)] is for structs; a union is not a table row",
                );
                return None;
            }
        };
        let fields = named
            .named
            .iter()
            .filter_map(|f| {
                Some(Field {
                    ident: f.ident.as_ref()?,
                    vis: &f.vis,
                    ty: &f.ty,
                    attrs: FieldAttrs::from_attrs(cx, &f.attrs),
                })
            })
            .collect();
        Some(Container {
            input,
            ident: &input.ident,
            vis: &input.vis,
            attrs,
            fields,
        })
    }

    /// The table name: `name = "..."`, or the documented default.
    pub(crate) fn table_name(&self) -> (String, Span) {
        match self.attrs.name.get() {
            Some((_, lit)) => (lit.value(), lit.span()),
            None => (
                default_table_name(&self.ident.to_string()),
                self.ident.span(),
            ),
        }
    }

    pub(crate) fn schema(&self) -> Option<&LitStr> {
        self.attrs.schema.get().map(|(_, lit)| lit)
    }

    /// Fields that are columns (not `skip`).
    pub(crate) fn columns(&self) -> impl Iterator<Item = &Field<'a>> {
        self.fields.iter().filter(|f| !f.attrs.skip.is_set())
    }

    pub(crate) fn primary_key(&self) -> Option<&Field<'a>> {
        self.columns().find(|f| f.attrs.primary_key.is_set())
    }
}

impl Field<'_> {
    /// The column name: `rename = "..."`, or the field's name without a raw `r#`.
    pub(crate) fn column_name(&self) -> (String, Span) {
        match self.attrs.rename.get() {
            Some((_, lit)) => (lit.value(), lit.span()),
            None => (unraw(self.ident), self.ident.span()),
        }
    }

    /// Stored as jsonb through serde (`json` attribute, or a `serde_json::Value`).
    pub(crate) fn is_json(&self) -> bool {
        self.attrs.json.is_set()
    }

    /// Left out of inserts: filled by the database (`generated`), or the soft-delete
    /// marker, which only deletes and restores write.
    pub(crate) fn is_generated(&self) -> bool {
        self.attrs.generated.is_set() || self.is_soft_delete()
    }

    pub(crate) fn is_soft_delete(&self) -> bool {
        self.attrs.soft_delete.is_set()
    }

    /// The `SCREAMING_CASE` name of the column constant.
    pub(crate) fn const_ident(&self) -> Ident {
        Ident::new(&unraw(self.ident).to_uppercase(), self.ident.span())
    }
}

pub(crate) fn unraw(ident: &Ident) -> String {
    let s = ident.to_string();
    s.strip_prefix("r#").map_or(s.clone(), str::to_owned)
}

/// `UserProfile` → `user_profile`.
pub(crate) fn snake_case(name: &str) -> String {
    let mut snake = String::with_capacity(name.len() + 4);
    for (i, ch) in name.chars().enumerate() {
        if ch.is_uppercase() {
            if i > 0 {
                snake.push('_');
            }
            snake.extend(ch.to_lowercase());
        } else {
            snake.push(ch);
        }
    }
    snake
}

/// `UserProfile` → `user_profiles`; `Category` → `categories`; `Address` → `addresses`.
pub(crate) fn default_table_name(struct_name: &str) -> String {
    let mut snake = snake_case(struct_name);
    let ends_with_consonant_y =
        snake.ends_with('y') && !snake[..snake.len() - 1].ends_with(['a', 'e', 'i', 'o', 'u']);
    if ends_with_consonant_y {
        snake.pop();
        snake.push_str("ies");
    } else if snake.ends_with(['s', 'x', 'z']) || snake.ends_with("ch") || snake.ends_with("sh") {
        snake.push_str("es");
    } else {
        snake.push('s');
    }
    snake
}

#[cfg(test)]
mod tests {
    use super::default_table_name;

    #[test]
    fn default_names_are_snake_case_plurals() {
        assert_eq!(default_table_name("Profile"), "profiles");
        assert_eq!(default_table_name("UserProfile"), "user_profiles");
        assert_eq!(default_table_name("Category"), "categories");
        assert_eq!(default_table_name("Key"), "keys");
        assert_eq!(default_table_name("Address"), "addresses");
        assert_eq!(default_table_name("Match"), "matches");
    }
}
