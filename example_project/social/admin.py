"""The admin, unchanged from any Django project except for two sharding habits.

- Foreign keys use ``raw_id_fields``: a drop-down would list every author of every shard.
- Nothing joins ``Follow.followee``: the followee may live on another shard, so the change
  list prefetches the followees by key (one query per shard they live on) instead of
  ``select_related``.

A change list names no shard key, so it fans out to every shard and merges: the count,
the ordering, the page, the search, the filters and the date hierarchy. A change, delete or
history page reads one row by pk, and the library finds its shard.
"""

from django.contrib import admin

from social.models import Author, Follow, Post


@admin.register(Author)
class AuthorAdmin(admin.ModelAdmin):
    list_display = ["handle", "name", "email", "joined", "id"]
    search_fields = ["handle", "name", "email"]
    list_filter = ["joined"]
    ordering = ["handle"]
    readonly_fields = ["id"]


@admin.register(Post)
class PostAdmin(admin.ModelAdmin):
    list_display = ["id", "author", "body", "likes", "created"]
    list_select_related = ["author"]  # same shard as the post
    search_fields = ["body", "author__handle"]
    list_filter = ["created"]
    date_hierarchy = "created"
    raw_id_fields = ["author"]
    readonly_fields = ["id"]
    ordering = ["-created"]


@admin.register(Follow)
class FollowAdmin(admin.ModelAdmin):
    list_display = ["id", "follower", "followee", "created"]
    list_select_related = ["follower"]  # same shard as the follow
    search_fields = ["follower__handle"]
    list_filter = ["created"]
    raw_id_fields = ["follower", "followee"]
    readonly_fields = ["id"]
    ordering = ["-created"]

    def get_queryset(self, request):
        # the followee may live on another shard: read by key, not joined
        return super().get_queryset(request).prefetch_related("followee")
