"""Plain Django views: nothing here names a database, the library routes every query."""

from django.db.models import Sum
from django.shortcuts import get_object_or_404, redirect, render

from django_shards import lookup_index, shard_for
from social.forms import FindAuthorForm, PostForm
from social.models import Author, Post

LATEST_COUNT = 20
POSTS_SHOWN = 50
FOLLOWING_SHOWN = 20


def latest_posts(request):
    """The newest posts of everyone: no shard key, so the query fans out to every shard.

    Each shard answers its own newest ``LATEST_COUNT`` (the limit is pushed down, the join to
    the author stays on the post's shard) and the library merge-sorts them.
    """
    posts = Post.objects.select_related("author").order_by("-created")[:LATEST_COUNT]
    return render(request, "social/latest.html", {"posts": posts})


def profile(request, author_id):
    """One author, her counts and who she follows: all on her shard, except the followees."""
    author = get_object_or_404(Author, pk=author_id)
    posts = author.post_set.all()
    follows = list(author.following.order_by("-created")[:FOLLOWING_SHOWN])
    # The followees live on their own shards (select_related("followee") would join on the
    # follower's shard and miss them): in_bulk reads them by key, one query on each of
    # their shards.
    by_id = Author.objects.in_bulk([f.followee_id for f in follows])
    followees = [by_id[f.followee_id] for f in follows if f.followee_id in by_id]
    return render(
        request,
        "social/profile.html",
        {
            "author": author,
            "post_count": posts.count(),
            "like_count": posts.aggregate(total=Sum("likes"))["total"] or 0,
            "following_count": author.following.count(),
            "followees": followees,
            "read_from": author._state.db,
        },
    )


def author_posts(request, author_id):
    """An author's posts, newest first: one shard."""
    author = get_object_or_404(Author, pk=author_id)
    posts = list(author.post_set.order_by("-created")[:POSTS_SHOWN])
    return render(
        request,
        "social/posts.html",
        {
            "author": author,
            "posts": posts,
            # right after a new post this is the primary: the pin came back in a cookie
            "read_from": posts[0]._state.db if posts else author._state.db,
        },
    )


def new_post(request, author_id):
    """Write a post, then redirect to the author's posts, where it shows (read-your-writes)."""
    author = get_object_or_404(Author, pk=author_id)
    form = PostForm(request.POST or None, instance=Post(author=author))
    if request.method == "POST" and form.is_valid():
        form.save()
        return redirect("social:posts", author_id=author.pk)
    return render(request, "social/post_form.html", {"author": author, "form": form})


def find_author(request):
    """Find an author by e-mail, as a login form would (``/find/?email=...``).

    ``email`` is a lookup of ``Author``: ``get(email=...)`` reads the lookup index (on the
    catalog) for her shard key, then queries her one shard; no fan-out. An address nobody
    has is answered by the index alone, with a 404.
    """
    form = FindAuthorForm(request.GET or None)
    context = {"form": form, "index_alias": lookup_index.alias()}
    if not form.is_valid():
        return render(request, "social/find.html", context)
    email = form.cleaned_data["email"]
    try:
        author = Author.objects.get(email=email)
    except Author.DoesNotExist:
        return render(request, "social/find.html", {**context, "missing": email}, status=404)
    context.update(
        author=author,
        shard=shard_for(Author, author.pk).name,  # from the shard map: no query
        read_from=author._state.db,
    )
    return render(request, "social/find.html", context)
