"""The admin of the test project: plain ``ModelAdmin`` classes on sharded models.

Nothing here knows about shards. A change list names no shard key, so it fans out to every
shard and merges (count, ordering, slicing for pagination, search, filters, the date
hierarchy); a change or delete page reads one row by pk and the router sends it to the
owner's shard. ``tests/test_admin.py`` drives these pages.
"""

from django.contrib import admin

from tests.testapp.models import Author, Follow, Post

PER_PAGE = 5


class PostInline(admin.TabularInline):
    """Posts on the author's change page: the related queryset names the author, one shard."""

    model = Post
    extra = 0
    fields = ["title", "likes", "created"]


@admin.register(Author)
class AuthorAdmin(admin.ModelAdmin):
    list_display = ["email", "name", "score", "joined"]
    ordering = ["email"]
    search_fields = ["email", "name"]
    list_filter = ["score", "joined"]  # a plain field filter and a date filter
    list_per_page = PER_PAGE
    readonly_fields = ["id"]
    inlines = [PostInline]


@admin.register(Post)
class PostAdmin(admin.ModelAdmin):
    list_display = ["title", "author", "likes", "created"]
    list_select_related = ["author"]  # co-located with the post: the join stays on its shard
    ordering = ["-created"]
    search_fields = ["title", "author__email"]
    list_filter = ["likes", "created"]
    list_per_page = PER_PAGE
    date_hierarchy = "created"
    raw_id_fields = ["author"]  # a drop-down would list every author of every shard
    readonly_fields = ["id"]


@admin.register(Follow)
class FollowAdmin(admin.ModelAdmin):
    list_display = ["id", "follower", "followee"]
    list_select_related = ["follower"]  # not followee: it may live on another shard
    ordering = ["id"]
    search_fields = ["follower__email"]
    list_filter = ["follower__score"]
    list_per_page = PER_PAGE
    raw_id_fields = ["follower", "followee"]
    readonly_fields = ["id"]
