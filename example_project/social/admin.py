"""The admin, unchanged from any Django project except for two sharding habits.

- Foreign keys use ``raw_id_fields``: a drop-down would list every author of every shard.
- Nothing joins ``Follow.followee``: the followee may live on another shard, so it is read
  by its own key (one query per row) instead of ``select_related``.

A change list names no shard key, so it fans out to every shard.
"""

from django.contrib import admin, messages
from django.shortcuts import redirect

from django_shards.exceptions import ShardKeyRequired
from social.models import Author, Follow, Post


class ShardedAdmin(admin.ModelAdmin):
    """Turns "this needs a fan-out" into a message instead of a server error.

    TODO(fan-out): drop this class once fan-out lands. Until then a change list, and the
    change, delete and history pages of a model whose key is not its pk (Post, Follow:
    ``get(pk=...)`` does not name the shard), raise ``ShardKeyRequired``.
    """

    def changelist_view(self, request, extra_context=None):
        return self._unless_fanout(request, super().changelist_view, request, extra_context)

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        view = super().changeform_view
        return self._unless_fanout(request, view, request, object_id, form_url, extra_context)

    def delete_view(self, request, object_id, extra_context=None):
        view = super().delete_view
        return self._unless_fanout(request, view, request, object_id, extra_context)

    def history_view(self, request, object_id, extra_context=None):
        view = super().history_view
        return self._unless_fanout(request, view, request, object_id, extra_context)

    def _unless_fanout(self, request, view, *args):
        try:
            return view(*args)
        except ShardKeyRequired as exc:
            self.message_user(
                request,
                f"This page needs a fan-out query, not available yet: {exc}",
                messages.WARNING,
            )
            return redirect("admin:index")


@admin.register(Author)
class AuthorAdmin(ShardedAdmin):
    list_display = ["handle", "name", "email", "joined", "id"]
    search_fields = ["handle", "name", "email"]
    list_filter = ["joined"]
    readonly_fields = ["id"]


@admin.register(Post)
class PostAdmin(ShardedAdmin):
    list_display = ["id", "author", "body", "likes", "created"]
    list_select_related = ["author"]  # same shard as the post
    search_fields = ["body", "author__handle"]
    list_filter = ["created"]
    raw_id_fields = ["author"]
    readonly_fields = ["id"]
    ordering = ["-created"]


@admin.register(Follow)
class FollowAdmin(ShardedAdmin):
    list_display = ["id", "follower", "followee", "created"]
    list_select_related = ["follower"]  # not followee: it may be on another shard
    search_fields = ["follower__handle"]
    list_filter = ["created"]
    raw_id_fields = ["follower", "followee"]
    readonly_fields = ["id"]
